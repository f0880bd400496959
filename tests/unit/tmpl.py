"""Building raw templates for engine calls in tests."""

from provider import attrtypes
from provider import constants as C


def T(**attrs) -> list:
    """T(CLASS=C.CKO_SECRET_KEY, LABEL=b"x") -> [(CKA_CLASS, raw), ...]"""
    out = []
    for name, value in attrs.items():
        cka = getattr(C, "CKA_" + name)
        out.append((cka, attrtypes.encode(cka, value)))
    return out


def ulong(raw: bytes) -> int:
    return int.from_bytes(raw, "little")
