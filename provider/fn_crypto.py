"""Encryption, decryption, digest, sign and verify: the operation functions.

Mechanisms the spec defines as single-part (RSA PKCS#1, OAEP, raw ECDSA, EdDSA,
key wrap) also accept Update/Final here: the input is buffered and the
single-part operation runs at Final. pkcs11-tool's --verify, for one, drives
every mechanism through C_VerifyUpdate. Output size queries and the buffer rules
are handled once, in Session.run.
"""

from . import constants as C
from .mechanisms import registry
from .session import FINAL, SINGLE, UPDATE, Operation
from .token import require

# operation kind -> (the key attribute that permits it, the implementation's init method)
KEYED = {
    "encrypt": (C.CKA_ENCRYPT, "encrypt_init"),
    "decrypt": (C.CKA_DECRYPT, "decrypt_init"),
    "sign": (C.CKA_SIGN, "sign_init"),
    "verify": (C.CKA_VERIFY, "verify_init"),
}


def _update(op: Operation, data: bytes):
    if op.ctx.multipart:
        return op.ctx.update(data)
    op.results.append(bytes(data))
    return b"" if op.kind in ("encrypt", "decrypt") else None


def _final(op: Operation, *args):
    if op.ctx.multipart:
        return op.ctx.final(*args)
    return op.ctx.oneshot(b"".join(op.results), *args)


class CryptoFunctions:
    def _key(self, session, handle: int, usage: int | None, mech: int,
             invalid: int = C.CKR_KEY_HANDLE_INVALID):
        """The key `handle` names, checked for use with `mech`, its sealed values opened."""
        key = self._object(session, handle, invalid)
        require(key.cls in (C.CKO_SECRET_KEY, C.CKO_PUBLIC_KEY, C.CKO_PRIVATE_KEY), invalid, "not a key")
        if usage is not None:
            require(key.flag(usage), C.CKR_KEY_FUNCTION_NOT_PERMITTED, C.name_of("CKA_", usage) + " is false")
        allowed = key.attrs.get(C.CKA_ALLOWED_MECHANISMS)
        require(not allowed or mech in allowed, C.CKR_MECHANISM_INVALID, "not in CKA_ALLOWED_MECHANISMS")
        return session.token.open(key)

    def _init(self, handle: int, kind: str, mech, key_handle: int) -> None:
        session = self._session(handle)
        require(kind not in session.ops, C.CKR_OPERATION_ACTIVE)
        usage, method = KEYED[kind]
        entry = registry.get(mech.type)
        require(entry.supports(method), C.CKR_MECHANISM_INVALID, f"{C.name_of('CKM_', mech.type)} cannot {kind}")
        key = self._key(session, key_handle, usage, mech.type)
        ctx = getattr(entry.impl, method)(key, mech.param)
        always_auth = key.cls == C.CKO_PRIVATE_KEY and key.flag(C.CKA_ALWAYS_AUTHENTICATE)
        session.start(Operation(kind, mech.type, ctx, key=key, needs_auth=always_auth))

    # --- encrypt / decrypt -----------------------------------------------------------
    def encrypt_init(self, handle, mech, key):
        self._init(handle, "encrypt", mech, key)

    def encrypt(self, handle, data, cap):
        return self._session(handle).run("encrypt", lambda op: op.ctx.oneshot(data), cap, SINGLE)

    def encrypt_update(self, handle, data, cap):
        return self._session(handle).run("encrypt", lambda op: _update(op, data), cap, UPDATE)

    def encrypt_final(self, handle, cap):
        return self._session(handle).run("encrypt", _final, cap, FINAL)

    def decrypt_init(self, handle, mech, key):
        self._init(handle, "decrypt", mech, key)

    def decrypt(self, handle, data, cap):
        return self._session(handle).run("decrypt", lambda op: op.ctx.oneshot(data), cap, SINGLE)

    def decrypt_update(self, handle, data, cap):
        return self._session(handle).run("decrypt", lambda op: _update(op, data), cap, UPDATE)

    def decrypt_final(self, handle, cap):
        return self._session(handle).run("decrypt", _final, cap, FINAL)

    # --- digest ----------------------------------------------------------------------
    def digest_init(self, handle, mech):
        session = self._session(handle)
        require("digest" not in session.ops, C.CKR_OPERATION_ACTIVE)
        entry = registry.get(mech.type)
        require(entry.supports("digest_init"), C.CKR_MECHANISM_INVALID)
        session.start(Operation("digest", mech.type, entry.impl.digest_init(mech.param)))

    def digest(self, handle, data, cap):
        return self._session(handle).run("digest", lambda op: op.ctx.oneshot(data), cap, SINGLE)

    def digest_update(self, handle, data):
        self._session(handle).run("digest", lambda op: op.ctx.update(data), None, UPDATE)

    def digest_key(self, handle, key_handle):
        session = self._session(handle)
        session.op("digest")

        def step(op):
            key = self._object(session, key_handle, C.CKR_KEY_HANDLE_INVALID)
            require(key.cls == C.CKO_SECRET_KEY, C.CKR_KEY_INDIGESTIBLE, "only secret keys")
            op.ctx.update(session.token.open(key).attrs[C.CKA_VALUE])
        session.run("digest", step, None, UPDATE)

    def digest_final(self, handle, cap):
        return self._session(handle).run("digest", lambda op: op.ctx.final(), cap, FINAL)

    # --- sign / verify -----------------------------------------------------------------
    def sign_init(self, handle, mech, key):
        self._init(handle, "sign", mech, key)

    def sign(self, handle, data, cap):
        return self._session(handle).run("sign", lambda op: op.ctx.oneshot(data), cap, SINGLE)

    def sign_update(self, handle, data):
        self._session(handle).run("sign", lambda op: _update(op, data), None, UPDATE)

    def sign_final(self, handle, cap):
        return self._session(handle).run("sign", _final, cap, FINAL)

    def verify_init(self, handle, mech, key):
        self._init(handle, "verify", mech, key)

    def verify(self, handle, data, signature):
        self._session(handle).run("verify", lambda op: op.ctx.oneshot(data, signature), None, SINGLE)

    def verify_update(self, handle, data):
        self._session(handle).run("verify", lambda op: _update(op, data), None, UPDATE)

    def verify_final(self, handle, signature):
        self._session(handle).run("verify", lambda op: _final(op, signature), None, FINAL)
