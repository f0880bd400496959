"""Sessions and the state of the operations running in them.

Each session has at most one active operation of each kind (encrypt, decrypt,
digest, sign, verify, find). The rules the spec sets for every operation are
kept here, once:
  - an error ends the operation (CKR_ARGUMENTS_BAD too, once the session and
    the operation are known: `refuse`), except CKR_OPERATION_ACTIVE below;
  - the two-call convention (PKCS#11 3.0 section 5.2): a length query (no output
    buffer) or a too-small buffer answers the length and changes nothing: no
    input is taken, the operation is neither advanced nor ended; the call with a
    big enough buffer does the work on its own input. A query to a multi-part
    Update answers at least the input's length, even when the mechanism
    releases nothing before Final (AEAD decryption), as SoftHSM2 does, so a
    client that allocates what it was told passes a real buffer next time;
    for the same reason a query to a single-part call or a Final answers at
    least 1 ("a number of bytes which would suffice ... may somewhat exceed the
    precise number", section 5.2): an empty output answered 0 sends a client
    that allocates what it was told (PyKCS11) back with a NULL buffer, another
    query, and the operation never ends (an RSA decryption whose implicit
    rejection message is empty, 1 in ~250 bad ciphertexts, left it active);
  - a single-part call after a multi-part call, or a multi-part call after a
    single-part length answer, is CKR_OPERATION_ACTIVE, which leaves the
    operation as it was (the call is refused, not failed) - except a Final,
    which "always terminates the active operation unless it returns
    CKR_BUFFER_TOO_SMALL or is a successful call to determine the length"
    (PKCS#11 3.0 C_EncryptFinal, C_SignFinal, ...): pkcs11-tool --test-ec ends
    its C_Sign length query's operation with C_SignFinal, then signs again;
  - a key with CKA_ALWAYS_AUTHENTICATE needs C_Login(CKU_CONTEXT_SPECIFIC) after
    the init and before the operation runs (CKR_USER_NOT_LOGGED_IN otherwise);
  - an operation whose key is destroyed or changed ends; the next call of that
    kind gets CKR_KEY_HANDLE_INVALID once (`fail`), then the usual
    CKR_OPERATION_NOT_INITIALIZED.

How the length is known without doing the work: every context tells the
exact output length of its next call from the input length alone
(`update_len`, `final_len`, `out_len`; see mechanisms/registry.py), which needs
no copy of the context (the primitives' cipher contexts cannot be copied).
Where only the data tells (single-part CBC-PAD, RSA and RFC 5649 unwrap
decryption) `out_len` answers None and the single-part step is a pure function
of its input: it is computed, and delivered only if it fits; the call with the
buffer computes it again from its own input. The same length functions check
the mechanism's length limits before the input is read (`Deferred` input is
copied only then), so a stated length the mechanism cannot take is an error
code, not a read past the caller's buffer.

Operations can also be handed to an `Offload` (the shim's native fast path for
AES-GCM and raw ECDSA, issue 4): the engine then holds nothing for them, and
tells the offload whenever what it granted stops being valid.
"""

import time
from dataclasses import dataclass, field

from . import constants as C
from .errors import PKCS11Error
from .principal import pkcs11_principal

SINGLE, UPDATE, FINAL = "single", "update", "final"
KEY_LEASE = 0.5      # seconds an operation runs on its key's state before the store is checked again
NO_OUTPUT = "no output"      # `cap` of a call that returns no data (C_DigestUpdate, C_Verify, ...)


class Deferred:
    """Input the engine reads only when the call has been checked (the shim's C
    buffers): `size` is the length the caller stated, `read()` the bytes."""
    size = 0

    def read(self) -> bytes:
        raise NotImplementedError


def size_of(data) -> int:
    return data.size if isinstance(data, Deferred) else len(data)


def read(data) -> bytes:
    return data.read() if isinstance(data, Deferred) else data


@dataclass
class Operation:
    kind: str
    mech: int
    ctx: object
    key: object = None
    shape: str | None = None       # SINGLE or UPDATE once a call committed it to one
    needs_auth: bool = False       # waiting for a context-specific login
    results: list = field(default_factory=list)   # find: handles not yet returned
    checked: float = field(default_factory=time.monotonic)   # when its key was last seen current


class Offload:
    """Where operations handed out of the engine live. The engine calls these
    under its lock on every event that invalidates what it granted: a session
    closed or logged out (`drop_session`), a key destroyed or changed
    (`drop_key`, with the code its operations' next call gets), C_Finalize
    (`drop_all`). This one holds nothing; the shim installs its own."""

    def drop_session(self, handle: int) -> None:
        pass

    def drop_key(self, handle: int, rv: int) -> None:
        pass

    def drop_all(self) -> None:
        pass


class Session:
    def __init__(self, handle: int, token, rw: bool):
        self.handle = handle
        self.token = token
        self.rw = rw
        self.ops: dict[str, Operation] = {}
        self.ended: dict[str, int] = {}     # kind -> rv for the next call, after `fail`
        self._principal, self._principal_user = None, None

    @property
    def principal(self):
        """Who this session acts for (provider/principal.py): this process's OS user in the
        token's login role; made again when the login changes."""
        user = self.token.user
        if self._principal is None or self._principal_user != user:
            self._principal, self._principal_user = pkcs11_principal(user, self.handle), user
        return self._principal

    def state(self) -> int:
        user = self.token.user
        if user == C.CKU_SO:
            return C.CKS_RW_SO_FUNCTIONS
        if user == C.CKU_USER:
            return C.CKS_RW_USER_FUNCTIONS if self.rw else C.CKS_RO_USER_FUNCTIONS
        return C.CKS_RW_PUBLIC_SESSION if self.rw else C.CKS_RO_PUBLIC_SESSION

    def flags(self) -> int:
        return C.CKF_SERIAL_SESSION | (C.CKF_RW_SESSION if self.rw else 0)

    # --- operation bookkeeping ---------------------------------------------
    def start(self, op: Operation) -> None:
        if op.kind in self.ops:
            raise PKCS11Error(C.CKR_OPERATION_ACTIVE, op.kind)
        self.ended.pop(op.kind, None)
        self.ops[op.kind] = op

    def op(self, kind: str) -> Operation:
        """The session's operation of `kind`; one with a key whose last head check is
        older than KEY_LEASE checks again first (another process may have destroyed or
        restricted the key: the refresh then ends the operation, see Library._object_changed)."""
        op = self.ops.get(kind)
        if op is not None and op.key is not None and time.monotonic() - op.checked > KEY_LEASE:
            self.token.refresh()
            op = self.ops.get(kind)
            if op is not None:
                op.checked = time.monotonic()
        if op is None:
            raise PKCS11Error(self.ended.pop(kind, C.CKR_OPERATION_NOT_INITIALIZED), kind)
        if op.needs_auth:   # refused, and like any failure it ends the operation (as SoftHSM2)
            self.end(kind)
            raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "context-specific login required")
        return op

    def end(self, kind: str) -> None:
        self.ops.pop(kind, None)

    def end_all(self) -> None:
        self.ops.clear()
        self.ended.clear()

    def fail(self, kind: str, rv: int) -> None:
        """End `kind` from outside (its key went away); its next call gets `rv`."""
        if self.ops.pop(kind, None) is not None:
            self.ended[kind] = rv

    def refuse(self, kind: str, reason: str):
        """A call of operation `kind` with a bad argument (a NULL pointer): it ends
        the operation, as every error but the two-call answers does."""
        self.op(kind)
        self.end(kind)
        raise PKCS11Error(C.CKR_ARGUMENTS_BAD, reason)

    def run(self, kind: str, mode: str, work, size=None, cap=NO_OUTPUT, at_least: int = 0):
        """Run one call of operation `kind`.

        `mode` is SINGLE (C_Encrypt, C_Sign, ...: finishes the operation), UPDATE
        (keeps it) or FINAL (C_EncryptFinal, ...: finishes it). `size(op)` runs
        before any input is read: it checks the mechanism's length limits and
        returns the exact output length of this call, or None when only the work
        tells (then `work` must leave op as it was). `work(op)` does the work and
        returns the output (None for calls without one). `cap` is the caller's
        output capacity, None for a length query, NO_OUTPUT for calls with no
        output; `at_least` is the least a length query answers (an Update's input
        length). Returns the output when it is delivered, else the length needed
        (an int): the caller says CKR_OK to a query, CKR_BUFFER_TOO_SMALL else.
        """
        op = self.op(kind)
        shape = SINGLE if mode == SINGLE else UPDATE
        if op.shape not in (None, shape):
            if mode == FINAL:           # a Final always ends the operation (see the module note)
                self.end(kind)
            raise PKCS11Error(C.CKR_OPERATION_ACTIVE, f"a {op.shape}-part {kind} is in progress")
        op.shape = shape
        if mode != UPDATE:
            at_least = max(at_least, 1)     # a query is never answered 0 (see the module note)
        try:
            n = None if size is None else size(op)
            if cap is not NO_OUTPUT and n is not None and (cap is None or cap < n):
                return n if cap is not None else max(n, at_least)
            out = work(op)
            if cap is not NO_OUTPUT and n is None and (cap is None or cap < len(out)):
                return len(out) if cap is not None else max(len(out), at_least)
        except Exception:
            self.end(kind)
            raise
        if mode != UPDATE:
            self.end(kind)
        return out
