"""Moving values across the C boundary: pointers and lengths in, Python values out.

Everything here raises PKCS11Error for what the caller got wrong, so handlers
stay straight-line code:
  - a NULL pointer where one is required, or NULL with a nonzero length:
    CKR_ARGUMENTS_BAD;
  - the two-call output convention (`output`, `ulongs_out`): NULL buffer ->
    *pulLen = needed, CKR_OK; too small -> *pulLen = needed,
    CKR_BUFFER_TOO_SMALL; the engine changes nothing in both cases;
  - C_GetAttributeValue's per-attribute rules (`write_attributes`);
  - templates (`read_template`): each value's length is checked against its
    attribute's layout and the configured limits before a byte is read;
    nested templates (CKA_WRAP_TEMPLATE, ...) nest at most NESTING_LIMIT deep
    and may not refer back to a template that holds them: both are
    CKR_ATTRIBUTE_VALUE_INVALID. An attribute type this token does not know is
    not read at all (the engine answers CKR_ATTRIBUTE_TYPE_INVALID, or a
    search matches nothing, whatever its value);
  - info structs: fixed-width text blank-padded, never NUL-terminated.
`bind(ffi)` is called once by handlers.install with the library's ffi.
"""

from provider import attrtypes
from provider import constants as C
from provider.errors import PKCS11Error
from provider.session import Deferred


class _Ref:
    ffi = None
    NULL = None
    attr_size = 0


F = _Ref()

UNAVAILABLE = C.CK_UNAVAILABLE_INFORMATION
# C_GetAttributeValue: when several attributes fail for different reasons the
# spec lets the token return any of the codes; we report the first of these.
ATTRIBUTE_PRECEDENCE = (C.CKR_ATTRIBUTE_SENSITIVE, C.CKR_ATTRIBUTE_TYPE_INVALID, C.CKR_BUFFER_TOO_SMALL)


def bind(ffi) -> None:
    F.ffi, F.NULL = ffi, ffi.NULL
    F.attr_size = ffi.sizeof("CK_ATTRIBUTE")


def bad(reason: str = "") -> PKCS11Error:
    return PKCS11Error(C.CKR_ARGUMENTS_BAD, reason)


def need(*pointers) -> None:
    """Every pointer given must be non-NULL."""
    for p in pointers:
        if p == F.NULL:
            raise bad("NULL pointer")


def data(p, n: int, required: bool = False, limit: int | None = None,
         too_long: int = C.CKR_ARGUMENTS_BAD) -> bytes:
    """A copy of the n bytes at p; NULL with n > 0 (or `required` NULL) is bad;
    n above `limit` is `too_long`, answered without reading the buffer."""
    if p == F.NULL:
        if n or required:
            raise bad("NULL buffer")
        return b""
    if limit is not None and n > limit:
        raise PKCS11Error(too_long, f"{n} bytes is above the configured limit of {limit}")
    return F.ffi.buffer(p, n)[:] if n else b""


# --- outputs ---------------------------------------------------------------------
def output(p_out, pul_len, produce) -> int:
    """Two-call convention. `produce(cap)` gets the caller's capacity (None for a
    length query) and returns the output, or the length needed (an int) when it
    did not deliver: the engine then changed nothing (Session.run)."""
    need(pul_len)
    cap = None if p_out == F.NULL else pul_len[0]
    try:
        out = produce(cap)
    except PKCS11Error as err:
        if err.rv == C.CKR_BUFFER_TOO_SMALL and err.needed is not None:
            pul_len[0] = err.needed
        raise
    n = out if isinstance(out, int) else len(out)
    pul_len[0] = n
    if cap is None:
        return C.CKR_OK
    if cap < n or isinstance(out, int):
        return C.CKR_BUFFER_TOO_SMALL
    if n:
        F.ffi.memmove(p_out, out, n)
    return C.CKR_OK


class Chunk(Deferred):
    """An input buffer the engine copies only once it checked the call (the
    session, the operation, the mechanism's length limits): a caller that states
    more than its buffer holds gets an error code wherever a check can tell."""

    def __init__(self, p, n: int, limit: int | None = None, too_long: int = C.CKR_DATA_LEN_RANGE):
        self.p, self.size, self.limit, self.too_long = p, n, limit, too_long

    def read(self) -> bytes:
        return data(self.p, self.size, limit=self.limit, too_long=self.too_long)


def ulongs_out(values, p_list, pul_count) -> int:
    """A CK_ULONG array (slot list, mechanism list) by the two-call convention."""
    need(pul_count)
    n = len(values)
    if p_list == F.NULL:
        pul_count[0] = n
        return C.CKR_OK
    if pul_count[0] < n:
        pul_count[0] = n
        return C.CKR_BUFFER_TOO_SMALL
    for i, value in enumerate(values):
        p_list[i] = value
    pul_count[0] = n
    return C.CKR_OK


# --- templates ----------------------------------------------------------------------
# A template may hold a CKA_*_TEMPLATE that holds one more (an unwrap template
# whose key gets a derive template); deeper nesting is refused.
NESTING_LIMIT = 2
# value lengths each fixed-size layout allows
FIXED_LENGTHS = {attrtypes.BOOL: (1,), attrtypes.ULONG: (8,), attrtypes.DATE: (0, 8)}


def _value_invalid(cka: int, why: str) -> PKCS11Error:
    return PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, f"{C.name_of('CKA_', cka)}: {why}")


def _address(p) -> int:
    return int(F.ffi.cast("uintptr_t", p))


def template_count(count: int, limits) -> None:
    if count > limits.max_template_attrs:
        raise bad(f"{count} attributes is above [limits] max_template_attrs")


def read_template(p, count: int, limits) -> list:
    """CK_ATTRIBUTE[count] -> [(type, raw bytes)]; attribute-array attributes
    (CKA_WRAP_TEMPLATE, ...) -> [(type, [(type, raw bytes), ...])].
    `limits` is the configuration's Limits; every attribute read, nested ones
    included, counts against max_template_attrs."""
    if count == 0:
        return []
    need(p)
    template_count(count, limits)
    budget = [limits.max_template_attrs - count]
    return _read_attrs(p, count, limits, budget, (_address(p),))


def _read_attrs(p, count: int, limits, budget: list, holders: tuple) -> list:
    out = []
    for i in range(count):
        attr = p[i]
        cka, n, kind = attr.type, attr.ulValueLen, attrtypes.kind_of(attr.type)
        if kind is None:
            out.append((cka, b""))                  # never used: see the module's doc
        elif kind == attrtypes.ATTRS:
            out.append((cka, _read_nested(attr, limits, budget, holders)))
        else:
            if n not in FIXED_LENGTHS.get(kind, (n,)):
                raise _value_invalid(cka, f"a {kind} value cannot be {n} bytes")
            if n > limits.max_data_len:
                raise _value_invalid(cka, f"{n} bytes is above [limits] max_data_len")
            out.append((cka, data(attr.pValue, n)))
    return out


def _read_nested(attr, limits, budget: list, holders: tuple) -> list:
    cka = attr.type
    n, rest = divmod(attr.ulValueLen, F.attr_size)
    if rest:
        raise _value_invalid(cka, "attribute array length")
    if n == 0:
        return []
    need(attr.pValue)
    if len(holders) > NESTING_LIMIT:
        raise _value_invalid(cka, f"templates nest deeper than {NESTING_LIMIT}")
    address = _address(attr.pValue)
    if address in holders:
        raise _value_invalid(cka, "the template refers to a template that holds it")
    if n > budget[0]:
        raise _value_invalid(cka, "more attributes than [limits] max_template_attrs")
    budget[0] -= n
    return _read_attrs(F.ffi.cast("CK_ATTRIBUTE *", attr.pValue), n, limits, budget, holders + (address,))


def attribute_types(p, count: int, limits) -> list[int]:
    if count == 0:
        return []
    need(p)
    template_count(count, limits)
    return [p[i].type for i in range(count)]


def write_attributes(p, values: list) -> int:
    """Fill CK_ATTRIBUTE entries with the engine's per-attribute answers (raw
    bytes, a nested [(type, raw)] list, or a CKR code). Every attribute is
    processed; the return value follows ATTRIBUTE_PRECEDENCE."""
    seen = {_write_one(p[i], value) for i, value in enumerate(values)}
    for rv in ATTRIBUTE_PRECEDENCE:
        if rv in seen:
            return rv
    return C.CKR_OK


def _write_one(attr, value) -> int:
    if isinstance(value, int):                       # sensitive / invalid
        attr.ulValueLen = UNAVAILABLE
        return value
    nested = isinstance(value, list)
    size = len(value) * F.attr_size if nested else len(value)
    if attr.pValue == F.NULL:
        attr.ulValueLen = size
        return C.CKR_OK
    if attr.ulValueLen < size:
        attr.ulValueLen = UNAVAILABLE
        return C.CKR_BUFFER_TOO_SMALL
    rv = C.CKR_OK
    if nested:
        inner = F.ffi.cast("CK_ATTRIBUTE *", attr.pValue)
        for i, (cka, _) in enumerate(value):
            inner[i].type = cka
        rv = write_attributes(inner, [raw for _, raw in value])
    elif size:
        F.ffi.memmove(attr.pValue, value, size)
    attr.ulValueLen = size
    return rv


# --- info structs -----------------------------------------------------------------
TEXT, NUMBER, VERSION = "text", "number", "version"

# C struct -> [(C field, engine dict key, kind)]
INFO_FIELDS = {
    "CK_INFO": [
        ("cryptokiVersion", "cryptoki_version", VERSION), ("manufacturerID", "manufacturer_id", TEXT),
        ("flags", "flags", NUMBER), ("libraryDescription", "library_description", TEXT),
        ("libraryVersion", "library_version", VERSION)],
    "CK_SLOT_INFO": [
        ("slotDescription", "description", TEXT), ("manufacturerID", "manufacturer_id", TEXT),
        ("flags", "flags", NUMBER), ("hardwareVersion", "hardware_version", VERSION),
        ("firmwareVersion", "firmware_version", VERSION)],
    "CK_TOKEN_INFO": [
        ("label", "label", TEXT), ("manufacturerID", "manufacturer_id", TEXT), ("model", "model", TEXT),
        ("serialNumber", "serial_number", TEXT), ("flags", "flags", NUMBER),
        ("ulMaxSessionCount", "max_session_count", NUMBER), ("ulSessionCount", "session_count", NUMBER),
        ("ulMaxRwSessionCount", "max_rw_session_count", NUMBER),
        ("ulRwSessionCount", "rw_session_count", NUMBER), ("ulMaxPinLen", "max_pin_len", NUMBER),
        ("ulMinPinLen", "min_pin_len", NUMBER), ("ulTotalPublicMemory", "total_public_memory", NUMBER),
        ("ulFreePublicMemory", "free_public_memory", NUMBER),
        ("ulTotalPrivateMemory", "total_private_memory", NUMBER),
        ("ulFreePrivateMemory", "free_private_memory", NUMBER),
        ("hardwareVersion", "hardware_version", VERSION), ("firmwareVersion", "firmware_version", VERSION),
        ("utcTime", "utc_time", TEXT)],
    "CK_SESSION_INFO": [
        ("slotID", "slot_id", NUMBER), ("state", "state", NUMBER), ("flags", "flags", NUMBER),
        ("ulDeviceError", "device_error", NUMBER)],
}


def padded(value, width: int) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return raw[:width].ljust(width, b" ")


def fill(struct: str, p, values: dict) -> None:
    """Write the engine's info dict into the C struct at p (already checked non-NULL)."""
    info = F.ffi.cast(struct + " *", p)
    for field, key, kind in INFO_FIELDS[struct]:
        value = values[key]
        if kind == NUMBER:
            setattr(info, field, value)
        elif kind == VERSION:
            version = getattr(info, field)
            version.major, version.minor = value
        else:
            array = getattr(info, field)
            F.ffi.memmove(array, padded(value, len(array)), len(array))
