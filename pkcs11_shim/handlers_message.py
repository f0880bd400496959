"""Message-based encryption and decryption (PKCS#11 3.0): C_MessageEncryptInit,
C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext,
C_MessageEncryptFinal and the decrypt twins.

Each message brings a CK_GCM_MESSAGE_PARAMS: NULL is CKR_ARGUMENTS_BAD; another
size, a NULL pIv or pTag is CKR_MECHANISM_PARAM_INVALID (the engine checks the
values). The IV the token used (generated or given) is written back to pIv, the
tag of an encrypted message to pTag. The mechanism's own parameter at init is not
read: the parameters come per message. Output buffers follow the two-call
convention; a length query changes nothing (no IV is generated). While an
operation is armed in the native fast path, the C entry points answer for it
and these handlers are not reached.
"""

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms import params as P

from . import native
from .handlers_common import handler
from .marshal import F, Chunk, bad, need

TAG_BITS = range(96, 129, 8)


def _params(p, n: int, with_tag: bool):
    """-> (the C struct, GcmMessageParams)."""
    if p == F.NULL:
        raise bad("CK_GCM_MESSAGE_PARAMS required")
    if n != F.ffi.sizeof("CK_GCM_MESSAGE_PARAMS"):
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "not a CK_GCM_MESSAGE_PARAMS")
    s = F.ffi.cast("CK_GCM_MESSAGE_PARAMS *", p)
    if s.pIv == F.NULL or s.pTag == F.NULL:
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "NULL pIv or pTag")
    iv = F.ffi.buffer(s.pIv, s.ulIvLen)[:] if s.ulIvLen <= 128 else b""
    tag = F.ffi.buffer(s.pTag, s.ulTagBits // 8)[:] if with_tag and s.ulTagBits in TAG_BITS else b""
    return s, P.GcmMessageParams(iv, s.ulIvFixedBits, s.ivGenerator, s.ulTagBits, tag)


def _input(library, p, n: int, too_long: int) -> Chunk:
    """An input buffer, copied by the engine only once it checked the call; a NULL
    one with a nonzero length is CKR_ARGUMENTS_BAD at once, as on the native path; a
    length above [limits] max_data_len is `too_long`, unread (native/ answers the same)."""
    if p == F.NULL and n:
        raise bad("NULL buffer")
    return Chunk(p, n, library.config.limits.max_data_len, too_long)


def _aad(library, p, n: int) -> Chunk:
    return _input(library, p, n, C.CKR_ARGUMENTS_BAD)


def _text(library, p, n: int, enc: bool) -> Chunk:
    return _input(library, p, n, C.CKR_DATA_LEN_RANGE if enc else C.CKR_ENCRYPTED_DATA_LEN_RANGE)


def _cap(p_out, pul_out):
    return None if p_out == F.NULL else pul_out[0]


def _put(p, value: bytes) -> None:
    if value:
        F.ffi.memmove(p, value, len(value))


def _needed(result, p_out, pul_out):
    """An int result is the length the output needs: the two-call answer."""
    pul_out[0] = result
    return C.CKR_OK if p_out == F.NULL else C.CKR_BUFFER_TOO_SMALL


def _init(method: str, kind: str):
    def fn(library, session, p_mech, key):
        need(p_mech)
        mech = P.Mechanism(p_mech[0].mechanism, None)
        with library._lock_of(session):
            native.forget(library, session, kind)
            getattr(library, method)(session, mech, key)
            native.hand_over(library, session, kind)
    return fn


handler("C_MessageEncryptInit")(_init("message_encrypt_init", "message_encrypt"))
handler("C_MessageDecryptInit")(_init("message_decrypt_init", "message_decrypt"))


@handler("C_EncryptMessage")
def encrypt_message(library, session, p_param, param_len, p_aad, aad_len, p_in, in_len, p_out, pul_out):
    need(pul_out)
    aad, text = _aad(library, p_aad, aad_len), _text(library, p_in, in_len, True)
    s, param = _params(p_param, param_len, with_tag=False)
    result = library.encrypt_message(session, param, aad, text, _cap(p_out, pul_out))
    if isinstance(result, int):
        return _needed(result, p_out, pul_out)
    iv, out, tag = result
    _put(s.pIv, iv)
    _put(p_out, out)
    _put(s.pTag, tag)
    pul_out[0] = len(out)
    return C.CKR_OK


@handler("C_DecryptMessage")
def decrypt_message(library, session, p_param, param_len, p_aad, aad_len, p_in, in_len, p_out, pul_out):
    need(pul_out)
    aad, text = _aad(library, p_aad, aad_len), _text(library, p_in, in_len, False)
    _, param = _params(p_param, param_len, with_tag=True)
    result = library.decrypt_message(session, param, aad, text, _cap(p_out, pul_out))
    if isinstance(result, int):
        return _needed(result, p_out, pul_out)
    _put(p_out, result)
    pul_out[0] = len(result)
    return C.CKR_OK


@handler("C_EncryptMessageBegin")
def encrypt_message_begin(library, session, p_param, param_len, p_aad, aad_len):
    aad = _aad(library, p_aad, aad_len)
    s, param = _params(p_param, param_len, with_tag=False)
    _put(s.pIv, library.encrypt_message_begin(session, param, aad))


@handler("C_DecryptMessageBegin")
def decrypt_message_begin(library, session, p_param, param_len, p_aad, aad_len):
    aad = _aad(library, p_aad, aad_len)
    _, param = _params(p_param, param_len, with_tag=False)
    library.decrypt_message_begin(session, param, aad)


def _next(method: str, with_tag: bool):
    def fn(library, session, p_param, param_len, p_in, in_len, p_out, pul_out, flags):
        need(pul_out)
        text = _text(library, p_in, in_len, method.startswith("encrypt"))
        s, param = _params(p_param, param_len, with_tag)
        last = bool(flags & C.CKF_END_OF_MESSAGE)
        result = getattr(library, method)(session, param, text, _cap(p_out, pul_out), last)
        if isinstance(result, int):
            return _needed(result, p_out, pul_out)
        out, tag = result
        _put(p_out, out)
        if tag is not None:
            _put(s.pTag, tag)
        pul_out[0] = len(out)
        return C.CKR_OK
    return fn


handler("C_EncryptMessageNext")(_next("encrypt_message_next", with_tag=False))
handler("C_DecryptMessageNext")(_next("decrypt_message_next", with_tag=True))


@handler("C_MessageEncryptFinal")
def message_encrypt_final(library, session):
    library.message_encrypt_final(session)


@handler("C_MessageDecryptFinal")
def message_decrypt_final(library, session):
    library.message_decrypt_final(session)
