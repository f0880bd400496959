"""ECB, CBC and CBC_PAD for any block cipher (AES, and DES3 for legacy clients).

Whole blocks go through at once; the tail waits for more data or Final. Without
padding, a total that is not a whole number of blocks is CKR_DATA_LEN_RANGE
(encrypting) or CKR_ENCRYPTED_DATA_LEN_RANGE (decrypting). CBC_PAD decryption
holds back the last block until Final (it carries the padding); bad padding is
CKR_ENCRYPTED_DATA_INVALID.
"""

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .. import constants as C
from ..errors import PKCS11Error
from .base import Context, require_param

# direction (encrypting?) -> (data too short/long code, data invalid code)
CODES = {
    True: (C.CKR_DATA_LEN_RANGE, C.CKR_DATA_INVALID),
    False: (C.CKR_ENCRYPTED_DATA_LEN_RANGE, C.CKR_ENCRYPTED_DATA_INVALID),
}


def is_bytes(param) -> bool:
    return isinstance(param, (bytes, bytearray))


def ecb(param, block: int):
    require_param(param is None, "ECB takes no parameter")
    return modes.ECB()


def cbc(param, block: int):
    require_param(is_bytes(param) and len(param) == block, f"the IV must be {block} bytes")
    return modes.CBC(bytes(param))


class BlockCtx(Context):
    def __init__(self, engine, block: int, encrypting: bool, pad: bool):
        self._engine = engine
        self._block = block
        self._encrypting = encrypting
        self._pad = pad
        self._tail = b""

    def update(self, data: bytes) -> bytes:
        buf = self._tail + bytes(data)
        keep = len(buf) % self._block
        if self._pad and not self._encrypting and keep == 0 and buf:
            keep = self._block                  # the last block holds the padding
        cut = len(buf) - keep
        self._tail = buf[cut:]
        return self._engine.update(buf[:cut]) if cut else b""

    def final(self) -> bytes:
        tail, self._tail = self._tail, b""
        bits = self._block * 8
        if self._encrypting and self._pad:
            padder = padding.PKCS7(bits).padder()
            return self._engine.update(padder.update(tail) + padder.finalize())
        if len(tail) != (self._block if self._pad else 0):
            raise PKCS11Error(CODES[self._encrypting][0], "not a whole number of blocks")
        if not self._pad:
            return b""
        unpadder = padding.PKCS7(bits).unpadder()
        try:
            return unpadder.update(self._engine.update(tail)) + unpadder.finalize()
        except ValueError:
            raise PKCS11Error(C.CKR_ENCRYPTED_DATA_INVALID, "bad padding") from None


class BlockMode:
    """One mechanism: `algorithm(key)` gives the cipher object for a key (checking
    its type), `mode(param, block)` the mode object for a parameter."""

    def __init__(self, algorithm, mode, block: int, pad: bool):
        self.algorithm = algorithm
        self.mode = mode
        self.block = block
        self.pad = pad

    def _cipher(self, key, param):
        return Cipher(self.algorithm(key), self.mode(param, self.block))

    def encrypt_init(self, key, param) -> BlockCtx:
        return BlockCtx(self._cipher(key, param).encryptor(), self.block, True, self.pad)

    def decrypt_init(self, key, param) -> BlockCtx:
        return BlockCtx(self._cipher(key, param).decryptor(), self.block, False, self.pad)
