"""Triple DES, for legacy clients only: key generation, ECB, CBC, CBC_PAD.

DES3 keys are 24 bytes (three DES keys, each byte with odd parity), as
PKCS#11 and SoftHSM2 define them; CK_MECHANISM_INFO reports 192 bits like
SoftHSM2. The cipher comes from `cryptography`'s decrepit module. New
applications should use AES: nothing here is offered for wrapping.
"""

import os

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .. import constants as C
from ..errors import PKCS11Error
from .base import cached, check_key_type, require_param, secret
from .blockmodes import BlockMode, cbc, ecb
from .generic import secret_value
from .registry import register, register_key_type

BLOCK = 8
KEY_LEN = 24
KEY_BITS = 192


def with_odd_parity(raw: bytes) -> bytes:
    return bytes((b & 0xFE) | (bin(b >> 1).count("1") + 1) % 2 for b in raw)


def check_value(value: bytes) -> bytes:
    enc = Cipher(TripleDES(value), modes.ECB()).encryptor()
    return (enc.update(bytes(BLOCK)) + enc.finalize())[:3]


def des3(key):
    check_key_type(key, C.CKK_DES3)
    value = secret(key)
    if len(value) != KEY_LEN:
        raise PKCS11Error(C.CKR_KEY_SIZE_RANGE, "DES3 keys are 24 bytes")
    return cached(key, "des3", lambda: TripleDES(value))


class Des3KeyType:
    @staticmethod
    def complete(cls: int, attrs: dict) -> dict:
        value = secret_value(cls, attrs)
        if len(value) != KEY_LEN:
            raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "DES3 keys are 24 bytes")
        return {C.CKA_CHECK_VALUE: check_value(value)}


class Des3KeyGen:
    @staticmethod
    def generate_key(param, template: dict) -> dict:
        require_param(param is None, "CKM_DES3_KEY_GEN takes no parameter")
        if template.get(C.CKA_VALUE_LEN, KEY_LEN) != KEY_LEN:
            raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, "DES3 keys are 24 bytes")
        value = with_odd_parity(os.urandom(KEY_LEN))
        return {C.CKA_KEY_TYPE: C.CKK_DES3, C.CKA_VALUE: value, C.CKA_CHECK_VALUE: check_value(value)}


register_key_type(C.CKK_DES3, Des3KeyType())
register(C.CKM_DES3_KEY_GEN, Des3KeyGen(), KEY_BITS, KEY_BITS)
register(C.CKM_DES3_ECB, BlockMode(des3, ecb, BLOCK, pad=False), KEY_BITS, KEY_BITS)
register(C.CKM_DES3_CBC, BlockMode(des3, cbc, BLOCK, pad=False), KEY_BITS, KEY_BITS)
register(C.CKM_DES3_CBC_PAD, BlockMode(des3, cbc, BLOCK, pad=True), KEY_BITS, KEY_BITS)
