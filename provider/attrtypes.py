"""How each attribute's value is laid out in a CK_ATTRIBUTE buffer.

The engine keeps typed Python values (bool, int, bytes, tuples); the shim and the
store move raw bytes.  `decode` and `encode` are the one bridge between the two.

Kinds:
  bool   CK_BBOOL, one byte
  ulong  CK_ULONG, native 8 bytes (LP64)
  bytes  byte string (labels, DER, big integers, ...)
  date   CK_DATE, 8 ASCII digits YYYYMMDD, or empty
  mechs  array of CK_MECHANISM_TYPE -> tuple[int, ...]
  attrs  array of CK_ATTRIBUTE -> tuple[(type, typed value), ...]; the shim hands
         over and takes back a list of (type, raw bytes) pairs for this kind
"""

import struct

from . import constants as C
from .errors import PKCS11Error

_ULONG = struct.Struct("=Q")

BOOL, ULONG, BYTES, DATE, MECHS, ATTRS = "bool", "ulong", "bytes", "date", "mechs", "attrs"

KINDS = {
    C.CKA_CLASS: ULONG, C.CKA_TOKEN: BOOL, C.CKA_PRIVATE: BOOL, C.CKA_LABEL: BYTES,
    C.CKA_UNIQUE_ID: BYTES, C.CKA_APPLICATION: BYTES, C.CKA_VALUE: BYTES,
    C.CKA_OBJECT_ID: BYTES, C.CKA_CERTIFICATE_TYPE: ULONG, C.CKA_ISSUER: BYTES,
    C.CKA_SERIAL_NUMBER: BYTES, C.CKA_AC_ISSUER: BYTES, C.CKA_OWNER: BYTES,
    C.CKA_ATTR_TYPES: BYTES, C.CKA_TRUSTED: BOOL, C.CKA_CERTIFICATE_CATEGORY: ULONG,
    C.CKA_JAVA_MIDP_SECURITY_DOMAIN: ULONG, C.CKA_URL: BYTES,
    C.CKA_HASH_OF_SUBJECT_PUBLIC_KEY: BYTES, C.CKA_HASH_OF_ISSUER_PUBLIC_KEY: BYTES,
    C.CKA_NAME_HASH_ALGORITHM: ULONG, C.CKA_CHECK_VALUE: BYTES, C.CKA_KEY_TYPE: ULONG,
    C.CKA_SUBJECT: BYTES, C.CKA_ID: BYTES, C.CKA_SENSITIVE: BOOL, C.CKA_ENCRYPT: BOOL,
    C.CKA_DECRYPT: BOOL, C.CKA_WRAP: BOOL, C.CKA_UNWRAP: BOOL, C.CKA_SIGN: BOOL,
    C.CKA_SIGN_RECOVER: BOOL, C.CKA_VERIFY: BOOL, C.CKA_VERIFY_RECOVER: BOOL,
    C.CKA_DERIVE: BOOL, C.CKA_START_DATE: DATE, C.CKA_END_DATE: DATE,
    C.CKA_MODULUS: BYTES, C.CKA_MODULUS_BITS: ULONG, C.CKA_PUBLIC_EXPONENT: BYTES,
    C.CKA_PRIVATE_EXPONENT: BYTES, C.CKA_PRIME_1: BYTES, C.CKA_PRIME_2: BYTES,
    C.CKA_EXPONENT_1: BYTES, C.CKA_EXPONENT_2: BYTES, C.CKA_COEFFICIENT: BYTES,
    C.CKA_PUBLIC_KEY_INFO: BYTES, C.CKA_PRIME: BYTES, C.CKA_SUBPRIME: BYTES,
    C.CKA_BASE: BYTES, C.CKA_PRIME_BITS: ULONG, C.CKA_SUBPRIME_BITS: ULONG,
    C.CKA_VALUE_BITS: ULONG, C.CKA_VALUE_LEN: ULONG, C.CKA_EXTRACTABLE: BOOL,
    C.CKA_LOCAL: BOOL, C.CKA_NEVER_EXTRACTABLE: BOOL, C.CKA_ALWAYS_SENSITIVE: BOOL,
    C.CKA_KEY_GEN_MECHANISM: ULONG, C.CKA_MODIFIABLE: BOOL, C.CKA_COPYABLE: BOOL,
    C.CKA_DESTROYABLE: BOOL, C.CKA_EC_PARAMS: BYTES, C.CKA_EC_POINT: BYTES,
    C.CKA_ALWAYS_AUTHENTICATE: BOOL, C.CKA_WRAP_WITH_TRUSTED: BOOL,
    C.CKA_WRAP_TEMPLATE: ATTRS, C.CKA_UNWRAP_TEMPLATE: ATTRS, C.CKA_DERIVE_TEMPLATE: ATTRS,
    C.CKA_ALLOWED_MECHANISMS: MECHS, C.CKA_PROFILE_ID: ULONG,
    C.CKA_FERRO_BACKEND: BYTES, C.CKA_FERRO_KEY_REF: BYTES,
    C.CKA_FERRO_KEY_ID: BYTES, C.CKA_FERRO_VERSION: ULONG, C.CKA_FERRO_STATE: ULONG,
    C.CKA_FERRO_PRIMARY: BOOL, C.CKA_FERRO_RECORD: BYTES,
}


def kind_of(cka: int) -> str | None:
    """The layout of attribute `cka`, or None for an attribute this token does not know."""
    return KINDS.get(cka)


def _invalid(cka: int, why: str) -> PKCS11Error:
    return PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, f"{C.name_of('CKA_', cka)}: {why}")


def decode(cka: int, raw):
    """Raw bytes from a template (or, for ATTRS, a list of (type, bytes)) -> typed value."""
    kind = KINDS.get(cka)
    if kind is None:
        raise PKCS11Error(C.CKR_ATTRIBUTE_TYPE_INVALID, C.name_of("CKA_", cka))
    if kind == ATTRS:
        return tuple((t, decode(t, v)) for t, v in raw)
    raw = bytes(raw)
    if kind == BOOL:
        if len(raw) != 1:
            raise _invalid(cka, "CK_BBOOL must be one byte")
        return raw != b"\x00"
    if kind == ULONG:
        if len(raw) != _ULONG.size:
            raise _invalid(cka, "CK_ULONG must be 8 bytes")
        return _ULONG.unpack(raw)[0]
    if kind == DATE:
        if raw and (len(raw) != 8 or not raw.isdigit()):
            raise _invalid(cka, "CK_DATE must be 8 digits or empty")
        return raw
    if kind == MECHS:
        if len(raw) % _ULONG.size:
            raise _invalid(cka, "mechanism array length not a multiple of CK_ULONG")
        return tuple(v for (v,) in _ULONG.iter_unpack(raw))
    return raw


def encode(cka: int, value):
    """Typed value -> raw bytes (for ATTRS: a list of (type, raw bytes))."""
    kind = KINDS.get(cka, BYTES)
    if kind == ATTRS:
        return [(t, encode(t, v)) for t, v in value]
    if kind == BOOL:
        return b"\x01" if value else b"\x00"
    if kind == ULONG:
        return _ULONG.pack(value)
    if kind == MECHS:
        return b"".join(_ULONG.pack(m) for m in value)
    return bytes(value)


def ulong(value: int) -> bytes:
    return _ULONG.pack(value)
