"""Pieces every mechanism family shares: context shapes and key access.

A family's context classes derive from one of these so the engine's protocol
(see registry.py) is met in one way everywhere.
"""

from .. import constants as C
from ..errors import PKCS11Error


class Context:
    """Multi-part by default: oneshot is update + final (on this context: a
    subclass whose out_len answers None gives a pure oneshot of its own)."""
    multipart = True

    def oneshot(self, data: bytes, *args):
        out = self.update(data)
        tail = self.final(*args)
        return out + tail if isinstance(out, bytes) and isinstance(tail, bytes) else tail


class SinglePart:
    """A mechanism the spec defines as single-part; the engine buffers Update/Final."""
    multipart = False


def check_key_type(key, *allowed: int) -> None:
    if key.key_type not in allowed:
        raise PKCS11Error(C.CKR_KEY_TYPE_INCONSISTENT, C.name_of("CKK_", key.key_type))


def secret(key) -> bytes:
    """CKA_VALUE of a secret key (already unsealed by the engine)."""
    return bytes(key.attrs[C.CKA_VALUE])


def cached(key, name: str, factory):
    """A parsed form of `key` kept in key.cache (emptied by the engine on change)."""
    value = key.cache.get(name)
    if value is None:
        value = key.cache[name] = factory()
    return value


def param_invalid(reason: str) -> PKCS11Error:
    return PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, reason)


def require_param(cond: bool, reason: str) -> None:
    if not cond:
        raise param_invalid(reason)


# key types whose length a derivation may take from the key type alone, and those
# that need CKA_VALUE_LEN in the template
FIXED_LEN = {C.CKK_DES: 8, C.CKK_DES2: 16, C.CKK_DES3: 24}
NEEDS_LEN = frozenset({C.CKK_AES})


def derived_len(template: dict, natural: int) -> int:
    """Length of a derived secret key: CKA_VALUE_LEN, else the key type's fixed
    length, else `natural` (what the derivation produces)."""
    length = template.get(C.CKA_VALUE_LEN)
    key_type = template.get(C.CKA_KEY_TYPE)
    if length is None:
        if key_type in NEEDS_LEN:
            raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN needed")
        length = FIXED_LEN.get(key_type, natural)
    if length <= 0:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE_LEN must be positive")
    return length
