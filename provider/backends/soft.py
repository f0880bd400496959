"""The engine's own keys as a Backend: the key material is the engine's (sealed in the
token store), the operations are the engine's mechanisms (provider/mechanisms/).

A KeyRef blob here is the private key itself, PKCS#8 DER.  `inline` tells the engine
not to keep the blob as a reference but to hold the key as ordinary attributes
(CKA_VALUE, the RSA components, ...), exactly as keys made without any backend; so a
precedence list can name "soft", and migrate-key can read from and write to it.
Sign, decrypt and derive build a transient key object and run the registered
mechanism, so this backend answers exactly as the engine does.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import constants as C
from ..errors import PKCS11Error
from ..mechanisms import registry
from ..mechanisms.params import Ecdh1DeriveParams
from ..objects import Obj
from .base import Backend, FULL_CAPABILITIES, Health, KeyRef

# kind -> (CKK, how to make a key of it)
KINDS = {
    "ec-p256": (C.CKK_EC, lambda: ec.generate_private_key(ec.SECP256R1())),
    "ec-p384": (C.CKK_EC, lambda: ec.generate_private_key(ec.SECP384R1())),
    "rsa-2048": (C.CKK_RSA, lambda: rsa.generate_private_key(65537, 2048)),
}
CURVE_KIND = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}


def kind_of(public_key) -> str | None:
    """The KEY_KINDS name of a `cryptography` public key, None for any other key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return CURVE_KIND.get(public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048 \
            and public_key.public_numbers().e == 65537:
        return "rsa-2048"
    return None


def spki_of(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pkcs8_of(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def _der_trim(der: bytes) -> bytes:
    """The outer DER SEQUENCE alone: SoftHSM2 2.6 zero-pads what it wraps with
    CKM_AES_KEY_WRAP_PAD to 8 bytes before padding it again, so its PKCS#8 comes back
    with trailing zeros."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    n, head = der[1], 2
    if n & 0x80:
        head = 2 + (n & 0x7F)
        n = int.from_bytes(der[2:head], "big")
    return der[:head + n]


def ref_of_pkcs8(der: bytes) -> KeyRef:
    der = _der_trim(der)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "not a PKCS#8 private key") from None
    kind = kind_of(key.public_key())
    if kind is None:
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "not an EC P-256/P-384 or RSA-2048 key")
    return KeyRef(der, spki_of(key), kind)


class SoftBackend(Backend):
    kind = "software"
    exportable = True
    inline = True

    def __init__(self, name: str = "soft"):
        self.name = name

    def health(self) -> Health:
        return Health(True, "engine keys in the token store")

    def capabilities(self) -> frozenset:
        return FULL_CAPABILITIES

    def generate(self, kind: str, label: str) -> KeyRef:
        self.supports("generate", kind)
        key = KINDS[kind][1]()
        return KeyRef(pkcs8_of(key), spki_of(key), kind)

    def load(self, ref: KeyRef) -> None:
        ref_of_pkcs8(ref.blob)

    def _key(self, ref: KeyRef, op: str) -> Obj:
        self.supports(op, ref.kind)
        key_type = KINDS[ref.kind][0]
        attrs = registry.key_type(key_type).from_pkcs8(ref.blob)
        attrs.update({C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: key_type})
        return Obj(0, "", attrs)

    def sign(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        ctx = registry.get(mechanism.type).impl.sign_init(self._key(ref, "sign"), mechanism.param)
        return ctx.oneshot(data)

    def decrypt(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        ctx = registry.get(mechanism.type).impl.decrypt_init(self._key(ref, "decrypt"),
                                                             mechanism.param)
        return ctx.oneshot(data)

    def derive(self, ref: KeyRef, mechanism, peer_point: bytes) -> bytes:
        param = Ecdh1DeriveParams(C.CKD_NULL, b"", peer_point)
        made = registry.get(C.CKM_ECDH1_DERIVE).impl.derive(
            self._key(ref, "derive"), param, {C.CKA_KEY_TYPE: C.CKK_GENERIC_SECRET}, None)
        return made[C.CKA_VALUE]

    def wrap(self, ref: KeyRef, kek: bytes) -> bytes:
        return keywrap.aes_key_wrap_with_padding(kek, ref.blob)

    def unwrap(self, kind: str, wrapped: bytes, kek: bytes, label: str,
               extractable: bool, public_der: bytes) -> KeyRef:
        try:
            der = keywrap.aes_key_unwrap_with_padding(kek, wrapped)
        except keywrap.InvalidUnwrap:
            raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "soft: unwrap failed") from None
        ref = ref_of_pkcs8(der)
        if ref.kind != kind:
            raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, f"soft: wrapped key is {ref.kind}")
        return ref

    def destroy(self, ref: KeyRef) -> None:
        """The key is the blob: forgetting it destroys it."""
