"""A token object's attributes as one byte string, and back.

Layout (big-endian):  format (1 byte) then, sorted by attribute type, one entry
    type (8) | how (1) | length (4) | payload
where `how` says what the payload is:
    PLAIN   attrtypes.encode(type, value)
    SEALED  a sealed blob (see sealing.py); loads as a Sealed placeholder
    NESTED  an attribute array (CKA_WRAP_TEMPLATE, ...): entries type (8) | length (4) | raw
Sorting makes the bytes a function of the attributes alone, so the record tag is too.
"""

import struct

from .. import attrtypes
from .base import Sealed

FORMAT = 1
PLAIN, SEALED, NESTED = 0, 1, 2
_ENTRY = struct.Struct(">QBI")
_PAIR = struct.Struct(">QI")


def _pack_pairs(pairs) -> bytes:
    return b"".join(_PAIR.pack(t, len(raw)) + raw for t, raw in pairs)


def _unpack_pairs(data: bytes) -> list:
    pairs, pos = [], 0
    while pos < len(data):
        t, n = _PAIR.unpack_from(data, pos)
        pos += _PAIR.size
        pairs.append((t, _take(data, pos, n)))
        pos += n
    return pairs


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise ValueError("record truncated")
    return data[pos:pos + n]


# how -> payload -> typed value (or placeholder)
_READERS = {
    PLAIN: lambda cka, p: attrtypes.decode(cka, p),
    SEALED: lambda cka, p: Sealed(p),
    NESTED: lambda cka, p: attrtypes.decode(cka, _unpack_pairs(p)),
}


def pack(attrs: dict, sensitive: frozenset, seal) -> bytes:
    """`seal(cka, raw) -> blob` is called for each attribute in `sensitive`.
    `attrs` holds typed values only (no Sealed placeholders)."""
    out = [bytes([FORMAT])]
    for cka in sorted(attrs):
        raw = attrtypes.encode(cka, attrs[cka])
        if cka in sensitive:
            how, payload = SEALED, seal(cka, raw)
        elif attrtypes.kind_of(cka) == attrtypes.ATTRS:
            how, payload = NESTED, _pack_pairs(raw)
        else:
            how, payload = PLAIN, raw
        out.append(_ENTRY.pack(cka, how, len(payload)) + payload)
    return b"".join(out)


def unpack(record: bytes) -> dict:
    """Typed attributes with Sealed placeholders; ValueError or PKCS11Error if malformed."""
    if not record or record[0] != FORMAT:
        raise ValueError("unknown record format")
    attrs, pos = {}, 1
    while pos < len(record):
        if pos + _ENTRY.size > len(record):
            raise ValueError("record truncated")
        cka, how, n = _ENTRY.unpack_from(record, pos)
        pos += _ENTRY.size
        reader = _READERS.get(how)
        if reader is None or cka in attrs:
            raise ValueError("malformed record")
        attrs[cka] = reader(cka, _take(record, pos, n))
        pos += n
    return attrs
