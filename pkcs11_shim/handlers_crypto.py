"""Encrypt, decrypt, digest, sign and verify.

The functions come in a few shapes, so they are tables of (engine method,
shape) rather than one handler each written out:
  init      (hSession, pMechanism, hKey)                    -> method(s, mech, key)
  out       (hSession, pIn, ulInLen, pOut, pulOutLen)        -> method(s, data, cap)
  final     (hSession, pOut, pulOutLen)                      -> method(s, cap)
  update    (hSession, pIn, ulInLen)                         -> method(s, data)
  check     (hSession, pIn, ulInLen, pSig, ulSigLen)         -> method(s, data, sig)
  sigfinal  (hSession, pSig, ulSigLen)                       -> method(s, sig)
Output sizes and the buffer rules live in marshal.output and Session.run. A
NULL pointer is refused through the engine (Library.refuse), so that it ends the
operation; input buffers go to the engine as `Chunk`s, copied only after the
engine checked the call.

Encrypt, decrypt and sign inits may hand the operation to the native fast path
(native.py: AES-GCM, raw ECDSA); the C entry points then answer for it without
Python.
"""

from provider import constants as C

from . import native
from .handlers_common import handler
from .marshal import F, Chunk, output
from .mechparams import read_mechanism


def _init(method):
    kind = method.removesuffix("_init")

    def fn(library, session, p_mech, key):
        mech = read_mechanism(p_mech, library.config.limits)
        with library._lock_of(session):
            native.forget(library, session, kind)
            getattr(library, method)(session, mech, key)
            native.hand_over(library, session, kind)
    return fn


def _kind(method: str) -> str:
    return method.split("_")[0]


def _input(library, method: str, p, n: int, signature: bool = False) -> Chunk:
    """The input of `method`, read only after the engine's checks; a length above
    [limits] max_data_len is the spec's *_LEN_RANGE for that input, unread."""
    code = (C.CKR_SIGNATURE_LEN_RANGE if signature else
            C.CKR_ENCRYPTED_DATA_LEN_RANGE if method.startswith("decrypt") else C.CKR_DATA_LEN_RANGE)
    return Chunk(p, n, library.config.limits.max_data_len, code)


def _refuse_null(library, session, method, *pointers) -> None:
    """(pointer, length) pairs, or (pointer, None) for one that must be there: a
    NULL one is CKR_ARGUMENTS_BAD, which ends the operation (spec: every error
    but the two-call answers does) once the session and the operation are known."""
    for p, n in pointers:
        if p == F.NULL and (n is None or n):
            library.refuse(session, _kind(method), "NULL pointer")


def _out(method):
    def fn(library, session, p_in, in_len, p_out, pul_out):
        _refuse_null(library, session, method, (pul_out, None), (p_in, in_len))
        chunk = _input(library, method, p_in, in_len)
        return output(p_out, pul_out, lambda cap: getattr(library, method)(session, chunk, cap))
    return fn


def _final(method):
    def fn(library, session, p_out, pul_out):
        _refuse_null(library, session, method, (pul_out, None))
        return output(p_out, pul_out, lambda cap: getattr(library, method)(session, cap))
    return fn


def _update(method):
    def fn(library, session, p_in, in_len):
        _refuse_null(library, session, method, (p_in, in_len))
        getattr(library, method)(session, _input(library, method, p_in, in_len))
    return fn


def _check(method):
    def fn(library, session, p_in, in_len, p_sig, sig_len):
        _refuse_null(library, session, method, (p_in, in_len), (p_sig, sig_len))
        getattr(library, method)(session, _input(library, method, p_in, in_len),
                                 _input(library, method, p_sig, sig_len, signature=True))
    return fn


def _sigfinal(method):
    def fn(library, session, p_sig, sig_len):
        _refuse_null(library, session, method, (p_sig, sig_len))
        getattr(library, method)(session, _input(library, method, p_sig, sig_len, signature=True))
    return fn


TABLE = {
    "C_EncryptInit": (_init, "encrypt_init"),
    "C_Encrypt": (_out, "encrypt"),
    "C_EncryptUpdate": (_out, "encrypt_update"),
    "C_EncryptFinal": (_final, "encrypt_final"),
    "C_DecryptInit": (_init, "decrypt_init"),
    "C_Decrypt": (_out, "decrypt"),
    "C_DecryptUpdate": (_out, "decrypt_update"),
    "C_DecryptFinal": (_final, "decrypt_final"),
    "C_Digest": (_out, "digest"),
    "C_DigestUpdate": (_update, "digest_update"),
    "C_DigestFinal": (_final, "digest_final"),
    "C_SignInit": (_init, "sign_init"),
    "C_Sign": (_out, "sign"),
    "C_SignUpdate": (_update, "sign_update"),
    "C_SignFinal": (_final, "sign_final"),
    "C_VerifyInit": (_init, "verify_init"),
    "C_Verify": (_check, "verify"),
    "C_VerifyUpdate": (_update, "verify_update"),
    "C_VerifyFinal": (_sigfinal, "verify_final"),
}

for _name, (_shape, _method) in TABLE.items():
    handler(_name)(_shape(_method))


@handler("C_DigestInit")
def digest_init(library, session, p_mech):
    library.digest_init(session, read_mechanism(p_mech, library.config.limits))


@handler("C_DigestKey")
def digest_key(library, session, key):
    library.digest_key(session, key)
