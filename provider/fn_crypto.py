"""Encryption, decryption, digest, sign and verify: the operation functions.

Mechanisms the spec defines as single-part (RSA PKCS#1, OAEP, raw ECDSA, EdDSA,
key wrap) also accept Update/Final here: the input is buffered and the
single-part operation runs at Final. pkcs11-tool's --verify, for one, drives
every mechanism through C_VerifyUpdate. Output size queries, the buffer rules
and the order of the checks (session, operation, arguments, the mechanism's
length limits, then the input is read) are handled once, in Session.run. A call
with output returns the bytes when they are delivered, else the length needed
(an int): a length query, or a buffer too small.

Message-based encryption (PKCS#11 3.0) has its own shape: the operation is a
key; each message brings its parameters; a length query or a per-message error
leaves the operation as it was (mechanisms/aes_message.py).

Offloading (issue 4): after an init the shim may ask `offload_grant` for what a
native fast path needs to run the operation itself, and then `release` it here.
What it armed holds a lease: the shim asks `recheck` when an armed operation's
lease ran out, and a repeat init past it comes back through the engine's init,
which checks the store's head as every key use does (native/README.md).
"""

import hashlib
import os

from . import constants as C
from . import gate, schema
from .log import LOG
from .errors import PKCS11Error
from .mechanisms import registry
from .mechanisms.digest import NOT_FOR_KEYS
from .session import FINAL, NO_OUTPUT, SINGLE, UPDATE, Operation, read, size_of
from .token import require

# message kind -> (the key attribute that permits it, the mechanism flag, encrypting)
MESSAGE = {
    "message_encrypt": (C.CKA_ENCRYPT, C.CKF_MESSAGE_ENCRYPT, True),
    "message_decrypt": (C.CKA_DECRYPT, C.CKF_MESSAGE_DECRYPT, False),
}
IV_BLOCK = 1 << 16           # IV counter values reserved per store transaction

# operation kind -> (the key attribute that permits it, the implementation's init method)
KEYED = {
    "encrypt": (C.CKA_ENCRYPT, "encrypt_init"),
    "decrypt": (C.CKA_DECRYPT, "decrypt_init"),
    "sign": (C.CKA_SIGN, "sign_init"),
    "verify": (C.CKA_VERIFY, "verify_init"),
}


# Key separation (schema.py): a mechanism that wraps (CKM_AES_KEY_WRAP*, RSA) does not
# C_Encrypt / C_Decrypt with a secret key that wraps or unwraps: its ciphertext would be a
# wrapped key (a forged blob, or a wrapped key read back). An RSA public key's encryption is
# no secret, and RSA pairs are kept apart by their defaults only (schema.py says why).
WRAPS = C.CKF_WRAP | C.CKF_UNWRAP
KEPT_APART = ("encrypt", "decrypt")


def _buffered(op: Operation) -> int:
    return sum(map(len, op.results))


def _update_len(op: Operation, n: int) -> int:
    """Output of an encrypt/decrypt Update of n bytes (a buffered single-part one: none)."""
    return op.ctx.update_len(n) if op.ctx.multipart else 0


def _final_len(op: Operation):
    """Output (or signature) length of a Final; None: only the data tells."""
    return op.ctx.final_len() if op.ctx.multipart else op.ctx.out_len(_buffered(op))


def _update(op: Operation, data):
    if op.ctx.multipart:
        return op.ctx.update(read(data))
    op.results.append(bytes(read(data)))
    return b"" if op.kind in ("encrypt", "decrypt") else None


def _final(op: Operation, *args):
    if op.ctx.multipart:
        return op.ctx.final(*args)
    return op.ctx.oneshot(b"".join(op.results), *args)


def _signature_len(expected, signature) -> None:
    """A signature to verify is checked for length before it is read."""
    if expected is not None and size_of(signature) != expected:
        raise PKCS11Error(C.CKR_SIGNATURE_LEN_RANGE, f"expected {expected} bytes")


class CryptoFunctions:
    def _key(self, session, handle: int, usage: int | None, mech: int,
             invalid: int = C.CKR_KEY_HANDLE_INVALID, disallowed: int = C.CKR_MECHANISM_INVALID):
        """The key `handle` names, through the one gate (provider/gate.py): checked for use
        with `mech`, a governed key's state and audit record, its sealed values opened."""
        key = self._object(session, handle, invalid)
        return gate.use(session.token, key, usage, mech, session.principal, invalid, disallowed)

    def _init(self, handle: int, kind: str, mech, key_handle: int) -> None:
        session = self._session(handle)
        require(kind not in session.ops, C.CKR_OPERATION_ACTIVE)
        usage, method = KEYED[kind]
        entry = registry.get(mech.type)
        if not entry.supports(method):
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{C.name_of('CKM_', mech.type)} cannot {kind}")
        key = self._key(session, key_handle, usage, mech.type)
        if entry.flags & WRAPS and kind in KEPT_APART and key.cls == C.CKO_SECRET_KEY and self._separated \
                and not schema.readable(key.attrs):
            require(not (key.flag(C.CKA_WRAP) or key.flag(C.CKA_UNWRAP)), C.CKR_KEY_FUNCTION_NOT_PERMITTED,
                    "key separation: a wrapping key does not encrypt or decrypt with a key-wrap mechanism")
        ctx = getattr(entry.impl, method)(key, mech.param)
        always_auth = key.cls == C.CKO_PRIVATE_KEY and key.flag(C.CKA_ALWAYS_AUTHENTICATE)
        session.start(Operation(kind, mech.type, ctx, key=key, needs_auth=always_auth))

    # --- the call shapes (the engine side of the shim's tables) ---------------------
    def _single(self, kind: str, handle, data, cap):
        n = size_of(data)
        return self._session(handle).run(kind, SINGLE, lambda op: op.ctx.oneshot(read(data)),
                                         lambda op: op.ctx.out_len(n), cap)

    def _part(self, kind: str, handle, data, cap=NO_OUTPUT):
        n = size_of(data)
        size = None if cap is NO_OUTPUT else (lambda op: _update_len(op, n))
        return self._session(handle).run(kind, UPDATE, lambda op: _update(op, data), size, cap, at_least=n)

    def _last(self, kind: str, handle, cap):
        return self._session(handle).run(kind, FINAL, _final, _final_len, cap)

    def refuse(self, handle, kind: str, reason: str):
        """The shim found a NULL pointer: CKR_ARGUMENTS_BAD, which ends the operation
        (after the session and the operation were checked, in that order)."""
        self._session(handle).refuse(kind, reason)

    # --- encrypt / decrypt -----------------------------------------------------------
    def encrypt_init(self, handle, mech, key):
        self._init(handle, "encrypt", mech, key)

    def encrypt(self, handle, data, cap):
        return self._single("encrypt", handle, data, cap)

    def encrypt_update(self, handle, data, cap):
        return self._part("encrypt", handle, data, cap)

    def encrypt_final(self, handle, cap):
        return self._last("encrypt", handle, cap)

    def decrypt_init(self, handle, mech, key):
        self._init(handle, "decrypt", mech, key)

    def decrypt(self, handle, data, cap):
        return self._single("decrypt", handle, data, cap)

    def decrypt_update(self, handle, data, cap):
        return self._part("decrypt", handle, data, cap)

    def decrypt_final(self, handle, cap):
        return self._last("decrypt", handle, cap)

    # --- digest ----------------------------------------------------------------------
    def digest_init(self, handle, mech):
        session = self._session(handle)
        require("digest" not in session.ops, C.CKR_OPERATION_ACTIVE)
        entry = registry.get(mech.type)
        require(entry.supports("digest_init"), C.CKR_MECHANISM_INVALID)
        session.start(Operation("digest", mech.type, entry.impl.digest_init(mech.param)))

    def digest(self, handle, data, cap):
        return self._single("digest", handle, data, cap)

    def digest_update(self, handle, data):
        self._part("digest", handle, data)

    def digest_key(self, handle, key_handle):
        """C_DigestKey: a secret key's value into the digest, refused (CKR_KEY_INDIGESTIBLE,
        the one code the spec lists for a key the token will not digest) with MD5 or SHA-1
        (digest.NOT_FOR_KEYS) and with a digest not in the key's CKA_ALLOWED_MECHANISMS."""
        session = self._session(handle)
        session.op("digest")

        def step(op):
            key = self._object(session, key_handle, C.CKR_KEY_HANDLE_INVALID)
            require(key.cls == C.CKO_SECRET_KEY, C.CKR_KEY_INDIGESTIBLE, "only secret keys")
            require(op.mech not in NOT_FOR_KEYS, C.CKR_KEY_INDIGESTIBLE, "no MD5 or SHA-1 over a key")
            allowed = key.attrs.get(C.CKA_ALLOWED_MECHANISMS)
            require(not allowed or op.mech in allowed, C.CKR_KEY_INDIGESTIBLE, "not in CKA_ALLOWED_MECHANISMS")
            op.ctx.update(session.token.open(key).attrs[C.CKA_VALUE])
        session.run("digest", UPDATE, step)

    def digest_final(self, handle, cap):
        return self._last("digest", handle, cap)

    # --- sign / verify -----------------------------------------------------------------
    def sign_init(self, handle, mech, key):
        self._init(handle, "sign", mech, key)

    def sign(self, handle, data, cap):
        return self._single("sign", handle, data, cap)

    def sign_update(self, handle, data):
        self._part("sign", handle, data)

    def sign_final(self, handle, cap):
        return self._last("sign", handle, cap)

    def verify_init(self, handle, mech, key):
        self._init(handle, "verify", mech, key)

    def verify(self, handle, data, signature):
        n = size_of(data)
        self._session(handle).run("verify", SINGLE, lambda op: op.ctx.oneshot(read(data), read(signature)),
                                  lambda op: _signature_len(op.ctx.out_len(n), signature))

    def verify_update(self, handle, data):
        self._part("verify", handle, data)

    def verify_final(self, handle, signature):
        self._session(handle).run("verify", FINAL, lambda op: _final(op, read(signature)),
                                  lambda op: _signature_len(_final_len(op), signature))

    # --- message-based encrypt / decrypt ---------------------------------------------
    def _message_init(self, handle: int, kind: str, mech, key_handle: int) -> None:
        session = self._session(handle)
        require(kind not in session.ops, C.CKR_OPERATION_ACTIVE)
        usage, flag, encrypting = MESSAGE[kind]
        entry = registry.get(mech.type)
        if not entry.flags & flag:
            raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{C.name_of('CKM_', mech.type)} cannot {kind}")
        key = self._key(session, key_handle, usage, mech.type)
        ctx = entry.impl.message_init(key, mech.param, encrypting, lambda: self._reserve_iv(session.token, key))
        session.start(Operation(kind, mech.type, ctx, key=key))

    def message_encrypt_init(self, handle, mech, key):
        self._message_init(handle, "message_encrypt", mech, key)

    def message_decrypt_init(self, handle, mech, key):
        self._message_init(handle, "message_decrypt", mech, key)

    def encrypt_message(self, handle, param, aad, data, cap):
        """(iv, ciphertext, tag), or the needed length when cap is None or too small."""
        return self._session(handle).op("message_encrypt").ctx.one(param, aad, data, cap)

    def decrypt_message(self, handle, param, aad, data, cap):
        """The plaintext, or the needed length."""
        return self._session(handle).op("message_decrypt").ctx.one(param, aad, data, cap)

    def encrypt_message_begin(self, handle, param, aad) -> bytes:
        return self._session(handle).op("message_encrypt").ctx.begin(param, aad)

    def decrypt_message_begin(self, handle, param, aad) -> None:
        self._session(handle).op("message_decrypt").ctx.begin(param, aad)

    def encrypt_message_next(self, handle, param, data, cap, last: bool):
        """(output, tag or None), or the needed length."""
        return self._session(handle).op("message_encrypt").ctx.next(param, data, cap, last)

    def decrypt_message_next(self, handle, param, data, cap, last: bool):
        return self._session(handle).op("message_decrypt").ctx.next(param, data, cap, last)

    def message_encrypt_final(self, handle) -> None:
        self._message_final(handle, "message_encrypt")

    def message_decrypt_final(self, handle) -> None:
        self._message_final(handle, "message_decrypt")

    def _message_final(self, handle, kind) -> None:
        session = self._session(handle)
        session.op(kind)
        session.end(kind)

    def reserve_iv(self, handle: int, key_handle: int) -> tuple[int, int, int]:
        """IV counter values for the key of an offloaded message operation."""
        session = self._session(handle)
        return self._reserve_iv(session.token, self._key(session, key_handle, None, C.CKM_AES_GCM))

    @staticmethod
    def _reserve_iv(token, key) -> tuple[int, int, int]:
        """(start, count, salt): IV counter values no one got before for this key, and a
        random salt for them (aes_message.counter_field: bits 32..63 of an 8-byte or
        longer counter field, so that a copy of the token, or one put back from an older
        copy, whose counters hand out the same values, still makes other IVs).

        The high-water marks live in the token's store (store.reserve_counter), one
        per key lineage (a key and its copies share one), reserved in a write
        transaction committed before the values are used: a crash loses unused
        values, never repeats one, and no file beside the store takes part.
        A key made before store schema 2 continues the counter the upgrade
        imported for it (looked up by the old identifier, computed here and not kept)."""
        legacy = hashlib.sha256(b"ferrohsm gcm iv counter\0" + bytes(key.attrs[C.CKA_VALUE])).hexdigest()[:32]
        session_lineage = None if key.token else key.lineage or key.uid
        start = token.store.reserve_counter(key.uid, IV_BLOCK, legacy, session_lineage)
        return start, IV_BLOCK, int.from_bytes(os.urandom(4), "big") << 32

    # --- offloading to the native fast path ---------------------------------------------
    def offload_grant(self, handle: int, kind: str):
        """What a fast path needs to run the session's just-initialised `kind`
        operation itself, or None if it is not one it may take: AES-GCM or raw
        ECDSA before any data, with a key not needing a context-specific login.
        encrypt/decrypt -> (key handle, key, iv, aad, tag length);
        message_* -> (key handle, key, b"", b"", 0);
        sign -> (key handle, private value, CKA_EC_PARAMS), only for a key whose
        private value the engine holds (a device-held key has none: it stays here).
        A governed key's operation is granted too: its init passed the gate (state,
        usage, policy, the audit record); what the fast path then runs is counted and
        recorded against `count_target` (pkcs11_shim/native.py)."""
        op = self._session(handle).ops.get(kind)
        if op is None or op.shape is not None or op.needs_auth:
            return None
        if kind == "sign":
            value, params = op.key.attrs.get(C.CKA_VALUE), op.key.attrs.get(C.CKA_EC_PARAMS)
            if op.mech != C.CKM_ECDSA or op.key.key_type != C.CKK_EC or not isinstance(value, bytes) \
                    or not isinstance(params, bytes):
                return None
            return op.key.handle, value, params
        if op.mech != C.CKM_AES_GCM:
            return None
        grant = getattr(op.ctx, "offload", lambda: None)()
        if grant is None:
            return None
        if kind in MESSAGE:
            return op.key.handle, grant, b"", b"", 0
        return (op.key.handle, *grant)

    def count_target(self, handle: int, kind: str):
        """For the session's just-initialised `kind` operation on a governed key, what
        the uses the fast path runs are recorded against (gate.Counted); None for
        another key (its native uses are not recorded)."""
        session = self._session(handle)
        op = session.ops.get(kind)
        if op is None:
            return None
        usage = (MESSAGE[kind] if kind in MESSAGE else KEYED[kind])[0]
        return gate.counted(session.token, op.key, usage, op.mech, session.principal)

    def recheck(self, handle: int, key_handle: int) -> None:
        """The lease of an operation the fast path holds ran out: is its key still
        good? The store's head is checked (a key another process destroyed or
        changed reaches _object_changed, which ends the operations using it, the
        native ones too); then the handle must still name an object the session
        sees (_object checks the head first). Returning renews the lease."""
        self._object(self._session(handle), key_handle, C.CKR_KEY_HANDLE_INVALID)
        LOG.debug("session %d: key %d rechecked for the native fast path's lease", handle, key_handle)

    def release(self, handle: int, kind: str) -> None:
        """The fast path took the operation over: the engine forgets it."""
        self._session(handle).end(kind)
        LOG.debug("session %d: %s handed to the native fast path", handle, kind)
