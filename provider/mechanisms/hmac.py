"""HMAC sign/verify (CKM_*_HMAC and CKM_*_HMAC_GENERAL), and the MAC contexts
AES-CMAC shares.

Choices:
  - keys: CKK_GENERIC_SECRET or the mechanism's own CKK_*_HMAC type.
  - CK_MECHANISM_INFO key sizes are what SoftHSM2 reports, in bytes: the digest
    size up to 512. The minimum is advice, not enforced: RFC 2104 allows any key
    length and clients (JWT HS256 secrets, RFC 4231 vectors) use short keys.
  - *_HMAC_GENERAL: the CK_MAC_GENERAL_PARAMS length must be 1..digest size.
  - verify compares in constant time; a signature of the wrong length is
    CKR_SIGNATURE_LEN_RANGE, a wrong one CKR_SIGNATURE_INVALID.
"""

import hmac as _hmac

from cryptography.hazmat.primitives import hmac

from .. import constants as C
from ..errors import PKCS11Error
from .base import Context, check_key_type, require_param, secret
from .digest import HASHES
from .generic import MAX_LEN
from .registry import register


class MacSign(Context):
    """`mac` is any object with update(bytes) and finalize() -> bytes (HMAC, CMAC)."""

    def __init__(self, mac, length: int):
        self._mac = mac
        self._len = length

    def update(self, data: bytes) -> None:
        self._mac.update(bytes(data))

    def final(self) -> bytes:
        return self._mac.finalize()[:self._len]

    def final_len(self) -> int:
        return self._len

    def out_len(self, n: int) -> int:
        return self._len

    def oneshot(self, data: bytes) -> bytes:
        self._mac.update(bytes(data))
        return self.final()


class MacVerify(MacSign):
    def final(self, signature: bytes) -> None:
        check_mac(super().final(), bytes(signature))

    def oneshot(self, data: bytes, signature: bytes) -> None:
        self._mac.update(bytes(data))
        self.final(signature)


def check_mac(expected: bytes, signature: bytes) -> None:
    if len(signature) != len(expected):
        raise PKCS11Error(C.CKR_SIGNATURE_LEN_RANGE, f"expected {len(expected)} bytes")
    if not _hmac.compare_digest(expected, signature):
        raise PKCS11Error(C.CKR_SIGNATURE_INVALID)


class Mac:
    """One MAC mechanism: `factory(key)` makes a fresh MAC object for the key.

    `general`: the parameter is the output length (1..size); otherwise there is
    no parameter and the output is `size` bytes."""

    def __init__(self, factory, size: int, general: bool):
        self.factory = factory
        self.size = size
        self.general = general

    def _length(self, param) -> int:
        if not self.general:
            require_param(param is None, "this MAC takes no parameter")
            return self.size
        require_param(isinstance(param, int) and not isinstance(param, bool) and 1 <= param <= self.size,
                      f"MAC length must be 1..{self.size}")
        return param

    def sign_init(self, key, param) -> MacSign:
        length = self._length(param)
        return MacSign(self.factory(key), length)

    def verify_init(self, key, param) -> MacVerify:
        length = self._length(param)
        return MacVerify(self.factory(key), length)


# HMAC mechanism -> (its _GENERAL twin, the digest mechanism, its own key type)
HMACS = {
    C.CKM_MD5_HMAC: (C.CKM_MD5_HMAC_GENERAL, C.CKM_MD5, C.CKK_MD5_HMAC),
    C.CKM_SHA_1_HMAC: (C.CKM_SHA_1_HMAC_GENERAL, C.CKM_SHA_1, C.CKK_SHA_1_HMAC),
    C.CKM_SHA224_HMAC: (C.CKM_SHA224_HMAC_GENERAL, C.CKM_SHA224, C.CKK_SHA224_HMAC),
    C.CKM_SHA256_HMAC: (C.CKM_SHA256_HMAC_GENERAL, C.CKM_SHA256, C.CKK_SHA256_HMAC),
    C.CKM_SHA384_HMAC: (C.CKM_SHA384_HMAC_GENERAL, C.CKM_SHA384, C.CKK_SHA384_HMAC),
    C.CKM_SHA512_HMAC: (C.CKM_SHA512_HMAC_GENERAL, C.CKM_SHA512, C.CKK_SHA512_HMAC),
    C.CKM_SHA3_224_HMAC: (C.CKM_SHA3_224_HMAC_GENERAL, C.CKM_SHA3_224, C.CKK_SHA3_224_HMAC),
    C.CKM_SHA3_256_HMAC: (C.CKM_SHA3_256_HMAC_GENERAL, C.CKM_SHA3_256, C.CKK_SHA3_256_HMAC),
    C.CKM_SHA3_384_HMAC: (C.CKM_SHA3_384_HMAC_GENERAL, C.CKM_SHA3_384, C.CKK_SHA3_384_HMAC),
    C.CKM_SHA3_512_HMAC: (C.CKM_SHA3_512_HMAC_GENERAL, C.CKM_SHA3_512, C.CKK_SHA3_512_HMAC),
}


def hmac_factory(algorithm, own_type: int):
    def make(key):
        check_key_type(key, C.CKK_GENERIC_SECRET, own_type)
        return hmac.HMAC(secret(key), algorithm())
    return make


for _mech, (_general, _digest, _key_type) in HMACS.items():
    _alg = HASHES[_digest]
    _make = hmac_factory(_alg, _key_type)
    _size = _alg.digest_size
    register(_mech, Mac(_make, _size, general=False), _size, MAX_LEN)
    register(_general, Mac(_make, _size, general=True), _size, MAX_LEN)
