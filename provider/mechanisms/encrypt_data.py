"""Key derivation by encryption: CKM_{AES,DES3}_{ECB,CBC}_ENCRYPT_DATA.

The new key's value is the base key's encryption of the parameter data (ECB, or
CBC with the parameter's IV), without padding, as SoftHSM2 does:
  - it is an encryption by the base key, so the base key needs CKA_ENCRYPT besides
    CKA_DERIVE (`base_usage`, checked by the engine: CKR_KEY_FUNCTION_NOT_PERMITTED);
  - the data must be a non-empty whole number of blocks (CKR_MECHANISM_PARAM_INVALID);
  - the key takes the first CKA_VALUE_LEN bytes (or its type's fixed length, or
    all of the output); data shorter than the key asked for is
    CKR_MECHANISM_PARAM_INVALID (SoftHSM2 refuses it in the parameter check too).
"""

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .. import constants as C
from ..errors import PKCS11Error
from . import aes, des3
from .base import derived_len, require_param
from .blockmodes import is_bytes
from .params import CbcEncryptDataParams
from .registry import register


def _ecb(param, block: int):
    require_param(is_bytes(param), "CK_KEY_DERIVATION_STRING_DATA required")
    return modes.ECB(), bytes(param)


def _cbc(param, block: int):
    require_param(isinstance(param, CbcEncryptDataParams) and len(param.iv) == block,
                  f"CBC_ENCRYPT_DATA_PARAMS with a {block}-byte IV required")
    return modes.CBC(bytes(param.iv)), bytes(param.data)


class EncryptData:
    base_usage = (C.CKA_ENCRYPT,)

    def __init__(self, algorithm, mode, block: int):
        self.algorithm = algorithm      # key -> cipher algorithm (checks the key type)
        self.mode = mode                # (param, block) -> (mode, data)
        self.block = block

    def derive(self, base_key, param, template: dict, resolve) -> dict:
        mode, data = self.mode(param, self.block)
        require_param(data and len(data) % self.block == 0,
                      f"the data must be a whole number of {self.block}-byte blocks")
        enc = Cipher(self.algorithm(base_key), mode).encryptor()
        out = enc.update(data) + enc.finalize()
        length = derived_len(template, len(out))
        if length > len(out):
            raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "the data is shorter than the key to derive")
        return {C.CKA_VALUE: out[:length]}


register(C.CKM_AES_ECB_ENCRYPT_DATA, EncryptData(aes.aes, _ecb, aes.BLOCK), aes.MIN_KEY, aes.MAX_KEY)
register(C.CKM_AES_CBC_ENCRYPT_DATA, EncryptData(aes.aes, _cbc, aes.BLOCK), aes.MIN_KEY, aes.MAX_KEY)
register(C.CKM_DES3_ECB_ENCRYPT_DATA, EncryptData(des3.des3, _ecb, des3.BLOCK), des3.KEY_BITS, des3.KEY_BITS)
register(C.CKM_DES3_CBC_ENCRYPT_DATA, EncryptData(des3.des3, _cbc, des3.BLOCK), des3.KEY_BITS, des3.KEY_BITS)
