"""Generic secret keys: CKM_GENERIC_SECRET_KEY_GEN and the key types that are
"just bytes" (generic secret, the CKK_*_HMAC types, CKK_HKDF).

Choices:
  - CKA_VALUE_LEN is required and must be 1..512 bytes (SoftHSM2 accepts any
    non-zero length; 512 bytes is the largest HMAC key it reports).
  - CK_MECHANISM_INFO for CKM_GENERIC_SECRET_KEY_GEN is in bits (PKCS#11 3.0
    says so for this mechanism): 8..4096.
  - CKA_CHECK_VALUE of these keys is the first 3 bytes of SHA-1 of the value
    (PKCS#11 3.0, generic secret key objects).
"""

import hashlib
import os

from .. import constants as C
from ..errors import PKCS11Error
from .base import require_param
from .registry import register, register_key_type

MIN_LEN, MAX_LEN = 1, 512

# key types whose value is an opaque byte string of any length in MIN_LEN..MAX_LEN
GENERIC_TYPES = (
    C.CKK_GENERIC_SECRET, C.CKK_HKDF,
    C.CKK_MD5_HMAC, C.CKK_SHA_1_HMAC, C.CKK_SHA224_HMAC, C.CKK_SHA256_HMAC,
    C.CKK_SHA384_HMAC, C.CKK_SHA512_HMAC,
    C.CKK_SHA3_224_HMAC, C.CKK_SHA3_256_HMAC, C.CKK_SHA3_384_HMAC, C.CKK_SHA3_512_HMAC,
)


def check_value(value: bytes) -> bytes:
    return hashlib.sha1(value).digest()[:3]


def value_len(template: dict) -> int:
    """CKA_VALUE_LEN of a key-generation template: required, MIN_LEN..MAX_LEN."""
    n = template.get(C.CKA_VALUE_LEN)
    if n is None:
        raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN missing")
    if not MIN_LEN <= n <= MAX_LEN:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, f"CKA_VALUE_LEN must be {MIN_LEN}..{MAX_LEN}")
    return n


def secret_value(cls: int, attrs: dict) -> bytes:
    """CKA_VALUE of a secret key being created, checked against a stated CKA_VALUE_LEN."""
    if cls != C.CKO_SECRET_KEY:
        raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, "a secret key type in another class")
    value = attrs.get(C.CKA_VALUE)
    if value is None:
        raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE missing")
    stated = attrs.get(C.CKA_VALUE_LEN)
    if stated is not None and stated != len(value):
        raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, "CKA_VALUE_LEN does not match the key")
    return bytes(value)


class GenericKeyType:
    @staticmethod
    def complete(cls: int, attrs: dict) -> dict:
        value = secret_value(cls, attrs)
        if not MIN_LEN <= len(value) <= MAX_LEN:
            raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, f"key length must be {MIN_LEN}..{MAX_LEN} bytes")
        return {C.CKA_VALUE_LEN: len(value), C.CKA_CHECK_VALUE: check_value(value)}


class SecretKeyGen:
    """Random bytes of CKA_VALUE_LEN, as a key of one fixed generic type."""

    def __init__(self, key_type: int):
        self.key_type = key_type

    def generate_key(self, param, template: dict) -> dict:
        require_param(param is None, "key generation takes no parameter")
        value = os.urandom(value_len(template))
        return {C.CKA_KEY_TYPE: self.key_type, C.CKA_VALUE: value, C.CKA_VALUE_LEN: len(value),
                C.CKA_CHECK_VALUE: check_value(value)}


for _kt in GENERIC_TYPES:
    register_key_type(_kt, GenericKeyType)
register(C.CKM_GENERIC_SECRET_KEY_GEN, SecretKeyGen(C.CKK_GENERIC_SECRET), MIN_LEN * 8, MAX_LEN * 8)
