"""Pieces the asymmetric families (RSA, EC, EdDSA) share: operation contexts
built from one function, big-integer attribute codecs, and key (de)serialising.
"""

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from .. import constants as C
from ..errors import PKCS11Error
from .base import Context, SinglePart, check_key_type


# --- contexts -----------------------------------------------------------------------
class OneShot(SinglePart):
    """A single-part operation: oneshot(data, *signature) -> fn(data, *signature).
    `size(n)` is its output (or signature) length for n bytes of data, None when
    only the data tells (fn is a pure function, so it may be computed to learn
    it); it raises the mechanism's length errors before the data is read."""

    def __init__(self, fn, size):
        self._fn = fn
        self.out_len = size

    def oneshot(self, data: bytes, *args):
        return self._fn(bytes(data), *(bytes(a) for a in args))


class Hashed(Context):
    """Hash the data part by part; at final hand the digest (and signature) to fn."""

    def __init__(self, algorithm, fn, size: int | None):
        self._h = hashes.Hash(algorithm)
        self._fn = fn
        self._size = size

    def final_len(self):
        return self._size

    def out_len(self, n: int):
        return self._size

    def update(self, data: bytes):
        self._h.update(bytes(data))

    def final(self, *args):
        return self._fn(self._h.finalize(), *(bytes(a) for a in args))


def checked(verify, *args) -> None:
    """Run a cryptography verify call; a mismatch is CKR_SIGNATURE_INVALID."""
    try:
        verify(*args)
    except InvalidSignature:
        raise PKCS11Error(C.CKR_SIGNATURE_INVALID) from None


# --- key access ---------------------------------------------------------------------
def key_of(key, key_type: int, cls: int):
    """Refuse a key of another type or class for this operation."""
    check_key_type(key, key_type)
    if key.cls != cls:
        raise PKCS11Error(C.CKR_KEY_TYPE_INCONSISTENT,
                          "needs a " + ("private" if cls == C.CKO_PRIVATE_KEY else "public") + " key")


def to_int(value) -> int:
    return int.from_bytes(bytes(value), "big")


def to_bytes(value: int, size: int = 0) -> bytes:
    """Big-endian, minimal (or left-padded to `size`)."""
    return value.to_bytes(max(size, (value.bit_length() + 7) // 8, 1), "big")


def need(attrs: dict, *ckas: int) -> None:
    for cka in ckas:
        if not attrs.get(cka):
            raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "missing " + C.name_of("CKA_", cka))


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pkcs8(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def load_pkcs8(der: bytes, kind):
    """PKCS#8 DER -> a cryptography private key of class `kind`; CKR_WRAPPED_KEY_INVALID otherwise."""
    try:
        key = serialization.load_der_private_key(bytes(der), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "not a PKCS#8 private key") from None
    if not isinstance(key, kind):
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "PKCS#8 key of another type")
    return key


class PointKeyType:
    """complete() and to_pkcs8() for keys held as CKA_EC_PARAMS with CKA_EC_POINT
    (public) or CKA_VALUE (private): EC and Edwards keys. A family sets the hooks:
    curve(attrs), public_key(curve, point), private_key(curve, value),
    point(public_key) and private_attrs(curve, params, private_key)."""

    def complete(self, obj_class: int, attrs: dict) -> dict:
        curve = self.curve(attrs)
        if obj_class == C.CKO_PUBLIC_KEY:
            need(attrs, C.CKA_EC_POINT)
            try:
                pub = self.public_key(curve, attrs[C.CKA_EC_POINT])
            except ValueError:
                raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_POINT does not fit the curve") from None
            return {C.CKA_EC_POINT: self.point(pub), C.CKA_PUBLIC_KEY_INFO: spki(pub)}
        need(attrs, C.CKA_VALUE)
        try:
            priv = self.private_key(curve, attrs[C.CKA_VALUE])
        except ValueError:
            raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE does not fit the curve") from None
        made = self.private_attrs(curve, bytes(attrs[C.CKA_EC_PARAMS]), priv)
        del made[C.CKA_KEY_TYPE], made[C.CKA_EC_PARAMS]
        return made

    def to_pkcs8(self, attrs: dict) -> bytes:
        return pkcs8(self.private_key(self.curve(attrs), attrs[C.CKA_VALUE]))
