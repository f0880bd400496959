"""ECB, CBC and CBC_PAD for any block cipher (AES, and DES3 for legacy clients).

Whole blocks go through at once; the tail waits for more data or Final. Without
padding, a total that is not a whole number of blocks is CKR_DATA_LEN_RANGE
(encrypting) or CKR_ENCRYPTED_DATA_LEN_RANGE (decrypting). CBC_PAD decryption
holds back the last plaintext block until Final (it carries the padding); bad
padding is CKR_ENCRYPTED_DATA_INVALID.
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
    """`make()` gives a fresh cryptography encryptor/decryptor: a multi-part
    operation uses one, each single-part call its own (so a single-part call is a
    pure function of its input, as Session.run needs where the length depends on
    the data). CBC_PAD decryption decrypts every whole block at once and holds
    back the last plaintext block until Final, so every length is known
    without decrypting: Update's from the lengths, Final's from the held block."""

    def __init__(self, make, block: int, encrypting: bool, pad: bool):
        self._make = make
        self._engine = None
        self._block = block
        self._encrypting = encrypting
        self._pad = pad
        self._tail = b""              # input not yet a whole block
        self._held = b""              # CBC_PAD decryption: the last plaintext block

    def _holds(self) -> bool:
        return self._pad and not self._encrypting

    def update_len(self, n: int) -> int:
        whole = (len(self._tail) + n) // self._block * self._block
        if self._holds():
            return max(len(self._held) + whole - self._block, 0)
        return whole

    def update(self, data: bytes) -> bytes:
        buf = self._tail + bytes(data)
        cut = len(buf) - len(buf) % self._block
        self._tail = buf[cut:]
        if not cut:
            return b""
        if self._engine is None:
            self._engine = self._make()
        out = self._engine.update(buf[:cut])
        if self._holds():
            out = self._held + out
            out, self._held = out[:-self._block], out[-self._block:]
        return out

    def final_len(self) -> int:
        if self._encrypting:
            return self._block if self._pad else 0
        if not self._pad or self._tail or not self._held:
            return 0                   # Final fails (or releases nothing)
        return len(self._unpad(self._held))

    def final(self) -> bytes:
        if self._encrypting and self._pad:
            padder = padding.PKCS7(self._block * 8).padder()
            tail, self._tail = self._tail, b""
            if self._engine is None:
                self._engine = self._make()
            return self._engine.update(padder.update(tail) + padder.finalize())
        if self._tail or (self._holds() and not self._held):
            raise PKCS11Error(CODES[self._encrypting][0], "not a whole number of blocks")
        return self._unpad(self._held) if self._holds() else b""

    def _unpad(self, block: bytes) -> bytes:
        unpadder = padding.PKCS7(self._block * 8).unpadder()
        try:
            return unpadder.update(block) + unpadder.finalize()
        except ValueError:
            raise PKCS11Error(C.CKR_ENCRYPTED_DATA_INVALID, "bad padding") from None

    def out_len(self, n: int):
        if self._encrypting and self._pad:
            return (n // self._block + 1) * self._block
        if n % self._block or (self._holds() and not n):
            raise PKCS11Error(CODES[self._encrypting][0], "not a whole number of blocks")
        return None if self._holds() else n

    def oneshot(self, data: bytes) -> bytes:
        return BlockCtx(self._make, self._block, self._encrypting, self._pad)._whole(data)

    def _whole(self, data: bytes) -> bytes:
        out = self.update(data)
        return out + self.final()


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
        cipher = self._cipher(key, param)
        return BlockCtx(cipher.encryptor, self.block, True, self.pad)

    def decrypt_init(self, key, param) -> BlockCtx:
        cipher = self._cipher(key, param)
        return BlockCtx(cipher.decryptor, self.block, False, self.pad)
