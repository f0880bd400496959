"""Sessions and the state of the operations running in them.

Each session has at most one active operation of each kind (encrypt, decrypt,
digest, sign, verify, find). The rules the spec sets for every operation are
kept here, once:
  - an error other than CKR_BUFFER_TOO_SMALL ends the operation;
  - a length query (no output buffer) or a too-small buffer keeps the operation
    and the computed output, so the next call returns exactly those bytes;
  - a single-part call after a multi-part update is CKR_OPERATION_ACTIVE, which
    leaves the multi-part operation running (the call is refused, not failed);
  - a key with CKA_ALWAYS_AUTHENTICATE needs C_Login(CKU_CONTEXT_SPECIFIC) after
    the init and before the operation runs (CKR_USER_NOT_LOGGED_IN otherwise);
  - an operation whose key is destroyed or changed ends; the next call of that
    kind gets CKR_KEY_HANDLE_INVALID once (`fail`), then the usual
    CKR_OPERATION_NOT_INITIALIZED.

Operations can also be handed to an `Offload` (the shim's native fast path for
AES-GCM and raw ECDSA, issue 4): the engine then holds nothing for them, and
tells the offload whenever what it granted stops being valid.
"""

from dataclasses import dataclass, field

from . import constants as C
from .errors import PKCS11Error

SINGLE, UPDATE, FINAL = "single", "update", "final"


@dataclass
class Operation:
    kind: str
    mech: int
    ctx: object
    key: object = None
    started: bool = False          # a multi-part update has been made
    pending: bytes | None = None   # output computed but not yet delivered
    needs_auth: bool = False       # waiting for a context-specific login
    results: list = field(default_factory=list)   # find: handles not yet returned


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
        op = self.ops.get(kind)
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

    def run(self, kind: str, step, cap: int | None = None, mode: str = SINGLE):
        """Run one call of operation `kind`.

        `step(op)` does the work and returns the output, or None for calls with
        no output. `cap` is the caller's output capacity, None for a length
        query. `mode` is SINGLE (C_Encrypt, C_Sign, ...: finishes the operation),
        UPDATE (keeps it) or FINAL (C_EncryptFinal, ...: finishes it).
        """
        op = self.op(kind)
        if mode == SINGLE and op.started:
            raise PKCS11Error(C.CKR_OPERATION_ACTIVE, f"a multi-part {kind} is in progress")
        try:
            if op.pending is None:
                out = step(op)
                if mode == UPDATE:
                    op.started = True
            else:
                out = op.pending
            if out is not None and (cap is None or cap < len(out)):
                op.pending = out           # keep it: the caller will ask again
                return out
            op.pending = None
        except PKCS11Error as err:
            if err.rv != C.CKR_BUFFER_TOO_SMALL:
                self.end(kind)
            raise
        except Exception:
            self.end(kind)
            raise
        if mode != UPDATE:
            self.end(kind)
        return out

