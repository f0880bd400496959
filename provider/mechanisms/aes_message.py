"""AES-GCM message-based encryption (PKCS#11 3.0): C_MessageEncryptInit,
C_EncryptMessage, C_EncryptMessageBegin/Next and the decrypt twins, with a
CK_GCM_MESSAGE_PARAMS per message. native/message.c keeps the same rules for
the fast path; the two are cross-checked by tests/e2e/c/msg_check.c.
"""

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import constants as C
from ..errors import PKCS11Error
from .aes import GCM_IV_LEN, GCM_MAX, GCM_TAG_BITS, gcm_open, is_bytes
from .base import require_param
from .params import GcmMessageParams
from ..session import read, size_of

IV_COUNTER_MIN, IV_RANDOM_MIN = 4, 12        # bytes the token generates after the fixed part


def _message_tag_len(p) -> int:
    require_param(isinstance(p, GcmMessageParams), "CK_GCM_MESSAGE_PARAMS required")
    require_param(is_bytes(p.iv) and len(p.iv) in GCM_IV_LEN, "the GCM IV must be 8..128 bytes")
    require_param(p.tag_bits in GCM_TAG_BITS, "ulTagBits must be 96..128 in steps of 8")
    return p.tag_bits // 8


def _busy(cond: bool, rv: int) -> None:
    if cond:
        raise PKCS11Error(rv, "message state")


class GcmMessages:
    """One message-based operation: a key, at most one open message
    (Begin .. Next with CKF_END_OF_MESSAGE), and IV counter values reserved for
    the key. `reserve()` -> (start, count): values the engine recorded durably
    as used for this key, so no counter IV ever repeats under it.

    IV generation (encryption): CKG_NO_GENERATE uses the caller's IV;
    CKG_GENERATE and CKG_GENERATE_COUNTER keep the first ulIvFixedBits (whole
    bytes) and put the next counter value, big-endian, in the >= 4 bytes after;
    CKG_GENERATE_RANDOM fills >= 12 bytes after the fixed part from the RNG
    (SP 800-38D 8.2.2). A length query (cap None or too small) generates nothing.
    Errors leave the operation active; a message failing its tag is closed."""

    def __init__(self, value: bytes, encrypting: bool, reserve):
        self._value = value
        self._encrypting = encrypting
        self._reserve = reserve
        self._next = self._end = 0
        self._engine = None                 # encrypting: the open message's encryptor
        self._open = None                   # decrypting: (iv, aad) of the open message
        self._parts: list[bytes] = []
        self._taken = 0                     # encrypting: bytes of the open message so far

    def _fits(self, n: int) -> None:
        """SP 800-38D's limit on one message, checked before the caller's buffer
        is looked at or its input read (as native/gcm.c ferro_gcm_fits)."""
        held = sum(map(len, self._parts)) if not self._encrypting else self._taken if self._engine else 0
        if held + n > GCM_MAX:
            raise PKCS11Error(C.CKR_DATA_LEN_RANGE if self._encrypting else C.CKR_ENCRYPTED_DATA_LEN_RANGE,
                              "above SP 800-38D's limit for one message")

    def offload(self) -> bytes:
        return self._value

    def _iv(self, p) -> bytes:
        if not self._encrypting or p.iv_generator == C.CKG_NO_GENERATE:
            return bytes(p.iv)
        fixed, rest = divmod(p.iv_fixed_bits, 8)
        require_param(rest == 0 and fixed <= len(p.iv), "ulIvFixedBits: whole bytes of the IV")
        gen = len(p.iv) - fixed
        if p.iv_generator == C.CKG_GENERATE_RANDOM:
            require_param(gen >= IV_RANDOM_MIN, "a random IV part needs 12 bytes or more")
            return bytes(p.iv[:fixed]) + os.urandom(gen)
        require_param(p.iv_generator in (C.CKG_GENERATE, C.CKG_GENERATE_COUNTER), "unknown ivGenerator")
        require_param(gen >= IV_COUNTER_MIN, "a counter IV part needs 4 bytes or more")
        if self._next == self._end:
            self._next, count = self._reserve()
            self._end = self._next + count
        value, self._next = self._next, self._next + 1
        require_param(gen >= 8 or value < 1 << (8 * gen), "this IV layout's counter space is used up")
        return bytes(p.iv[:fixed]) + value.to_bytes(gen, "big")

    def _cipher(self, iv: bytes, aad: bytes):
        """An encryptor (decryption goes through aes.gcm_open, which checks the tag first)."""
        engine = Cipher(algorithms.AES(self._value), modes.GCM(iv)).encryptor()
        if aad:
            engine.authenticate_additional_data(aad)
        return engine

    def _open_all(self, iv: bytes, aad: bytes, data: bytes, p, tag_len: int) -> bytes:
        tag = bytes(p.tag[:tag_len])
        require_param(len(tag) == tag_len, "pTag holds ulTagBits")
        return gcm_open(algorithms.AES(self._value), iv, aad, data, tag)

    @property
    def busy(self) -> bool:
        return self._engine is not None or self._open is not None

    def one(self, p, aad: bytes, data: bytes, cap):
        """C_EncryptMessage -> (iv, ciphertext, tag); C_DecryptMessage -> plaintext;
        the needed length (an int) when cap is None or too small."""
        _busy(self.busy, C.CKR_OPERATION_ACTIVE)
        tag_len = _message_tag_len(p)
        self._fits(size_of(data))
        if cap is None or cap < size_of(data):
            return size_of(data)
        iv, aad, data = self._iv(p), read(aad), read(data)
        if not self._encrypting:
            return self._open_all(iv, aad, data, p, tag_len)
        engine = self._cipher(iv, aad)
        out = engine.update(data) + engine.finalize()
        return iv, out, engine.tag[:tag_len]

    def begin(self, p, aad: bytes) -> bytes:
        """Open a message; returns the IV it uses."""
        _busy(self.busy, C.CKR_OPERATION_ACTIVE)
        _message_tag_len(p)
        iv, aad = self._iv(p), read(aad)
        if self._encrypting:
            self._engine, self._taken = self._cipher(iv, aad), 0
        else:
            self._open, self._parts = (iv, aad), []
        return iv

    def next(self, p, data: bytes, cap, last: bool):
        """A part of the open message -> (output, tag or None), or the needed length."""
        _busy(not self.busy, C.CKR_OPERATION_NOT_INITIALIZED)
        tag_len = _message_tag_len(p)
        self._fits(size_of(data))
        if not self._encrypting:
            if not last:                    # releases nothing; a query takes nothing
                if cap is None:
                    return size_of(data)
                self._parts.append(bytes(read(data)))
                return b"", None
            needed = sum(map(len, self._parts)) + size_of(data)
            if cap is None or cap < needed:
                return needed
            (iv, aad), body = self._open, b"".join(self._parts) + bytes(read(data))
            self._open, self._parts = None, []
            return self._open_all(iv, aad, body, p, tag_len), None
        if cap is None or cap < size_of(data):
            return size_of(data)
        out = self._engine.update(bytes(read(data)))
        self._taken += len(out)
        if not last:
            return out, None
        engine, self._engine, self._taken = self._engine, None, 0
        return out + engine.finalize(), engine.tag[:tag_len]
