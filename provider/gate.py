"""The one gate every key use passes, from every interface.

A PKCS#11 `*Init`, a wrap, an unwrap, a derive, the arming of the native fast path and
a REST encrypt or sign all call `use()` with the key object, the usage attribute that
permits the operation, the mechanism and the principal. It checks, in this order:
the object is a key; its usage attribute and CKA_ALLOWED_MECHANISMS allow the use; for
a governed key (CKA_FERRO_KEY_ID), what its record says the version may do now
(`governance.record.permits`: state, primary, floors); and then it writes the audit
record of the use, durably, before the key is opened. A record that cannot be written
refuses the use (fail closed). A key that leaves the token (C_WrapKey's key, a plain
backup) passes `export()` (`wrap_out()` for a wrapped one: C_WrapKey and the REST wrap).

The record of a governed key is found from its version's CKA_FERRO_KEY_ID and read
as the store has it now: every caller checks the store's head first (Token.refresh),
so a state another process changed is seen at the next use.

A caller that must not wait for durability where it stands (the service's event loop)
runs its uses inside `deferred()`: the records are queued (Audit.submit) instead of
awaited, and the caller holds the operation's result back until `Deferred.durable()`
says every one of them is durable - a record that cannot be written then refuses the
result as use() would have refused the operation.
"""

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass, field

from . import constants as C
from .audit import AuditUnavailable, Event
from .errors import PKCS11Error
from .governance import record as R
from .log import LOG

_DEFERRED: contextvars.ContextVar = contextvars.ContextVar("ferrohsm_gate_deferred", default=None)


@dataclass
class Deferred:
    """The records of the uses run inside one deferred(): their Futures."""
    futures: list = field(default_factory=list)

    async def durable(self) -> None:
        """Wait until every record is durable; PKCS11Error(CKR_FUNCTION_FAILED) if one
        could not be (Audit logged why)."""
        for future in self.futures:
            try:
                await asyncio.wrap_future(future)
            except AuditUnavailable:
                raise PKCS11Error(C.CKR_FUNCTION_FAILED, "the audit record could not be written") from None


@contextlib.contextmanager
def deferred():
    """Within it (this thread or task), record_use queues the records of uses; the
    caller awaits the Deferred's durable() before the result leaves."""
    pending = Deferred()
    reset = _DEFERRED.set(pending)
    try:
        yield pending
    finally:
        _DEFERRED.reset(reset)


KEY_CLASSES = (C.CKO_SECRET_KEY, C.CKO_PUBLIC_KEY, C.CKO_PRIVATE_KEY)
# FerroHSM's governance records: found only by a search that names their class, never
# made, changed, copied or destroyed through PKCS#11
RECORD_CLASSES = frozenset({C.CKO_FERRO_GOVERNED_KEY, C.CKO_FERRO_POLICY_TAG, C.CKO_FERRO_APPROVAL,
                            C.CKO_FERRO_MIGRATION})
RECORD = "governance record"       # Obj.cache slot of a decoded record


def governed(key) -> bool:
    return C.CKA_FERRO_KEY_ID in key.attrs


def use_of(key, usage: int | None) -> str | None:
    """The governance name of a use: a secret key's sign/verify is a MAC."""
    name = R.USE_OF_CKA.get(usage)
    if key.cls == C.CKO_SECRET_KEY and name in ("sign", "verify"):
        return "mac" if name == "sign" else "mac_verify"
    return name


def key_record(token, key_id: bytes):
    """(record object, KeyRecord) of the governed key `key_id` as the token holds it
    (the caller refreshed), or (None, None). Found through the token's map of key id
    -> record uid, which a miss rebuilds with one pass over the records."""
    obj = _record_obj(token, token.governed_ids.get(key_id), key_id)
    if obj is None:
        token.governed_ids = {o.attrs.get(C.CKA_FERRO_KEY_ID): o.uid
                              for o in token.index.candidates({C.CKA_CLASS: C.CKO_FERRO_GOVERNED_KEY})
                              if token.visible(o) and token.loaded(o)}
        obj = _record_obj(token, token.governed_ids.get(key_id), key_id)
        if obj is None:
            return None, None
    rec = obj.cache.get(RECORD)
    if rec is None:
        rec = obj.cache[RECORD] = R.KeyRecord.decode(token.open(obj).attrs[C.CKA_FERRO_RECORD])
    return obj, rec


def _record_obj(token, uid, key_id: bytes):
    obj = token.by_uid.get(uid) if uid else None
    if obj is None or obj.cls != C.CKO_FERRO_GOVERNED_KEY or not token.visible(obj) or not token.loaded(obj) \
            or obj.attrs.get(C.CKA_FERRO_KEY_ID) != key_id:
        return None
    return obj


def _governed_check(token, key, use: str | None, principal, mech: int) -> None:
    key_id = key.attrs[C.CKA_FERRO_KEY_ID]
    version = key.attrs.get(C.CKA_FERRO_VERSION)
    _, rec = key_record(token, key_id)
    if rec is None:
        reason = "its governance record is not found"
    elif use is None or (use not in R.PRODUCING and use not in R.CONSUMING):
        reason = f"a governed key is not used to {use or 'this'}"
    elif use not in R.uses_of(rec):
        reason = f"{rec.name} is not for {use}"
    else:
        reason = R.permits(rec, version, use)
    event = _event_of(key, principal, use or "use")
    mechanism = C.name_of("CKM_", mech)
    if reason is not None:
        record_use(token, principal, outcome="denied", message=f"{mechanism}: {reason}", **event)
        raise PKCS11Error(C.CKR_KEY_FUNCTION_NOT_PERMITTED, reason)
    record_use(token, principal, message=mechanism, **event, fail_closed=True)


def _event_of(key, principal, use: str) -> dict:
    """The audit event fields naming a governed key's version and its use by `principal`."""
    return dict(action=f"{principal.interface}.{use}", key_id=key.attrs[C.CKA_FERRO_KEY_ID].decode(errors="replace"),
                key_version=key.attrs.get(C.CKA_FERRO_VERSION))


def record_use(token, principal, action: str, key_id: str, key_version: int, outcome: str = "ok",
               message: str = "", fail_closed: bool = False, hold: bool = False) -> None:
    """Write the audit record of a governed key's use (durable before it returns; inside
    a store transaction the caller holds, it commits with it). `fail_closed`: a record
    that cannot be written refuses the use with CKR_FUNCTION_FAILED; a refusal's record
    that cannot be written is only logged. The token's lock is let go meanwhile, unless
    `hold` (a caller in the middle of changing the token's state: a session closing).
    Inside deferred(), the record is queued: its Future joins the Deferred if the use
    waits on it (`fail_closed`); a refusal's record is only queued."""
    try:
        audit = token.audit
        if audit is None:
            raise AuditUnavailable("no audit log is configured for this token")
        event = Event(actor=principal, action=action, key_id=key_id, key_version=key_version or 0,
                      outcome=outcome, message=message)
        pending = _DEFERRED.get()
        if token.in_transaction:
            audit.record_in(event)
        elif pending is not None:
            future = audit.submit(event)
            if fail_closed:
                pending.futures.append(future)
        elif hold:
            audit.record(event)
        else:
            with token.let_go():     # other threads' records share its commit (group commit)
                audit.record(event)
    except Exception as exc:      # noqa: BLE001 - any failure to record is the same refusal
        LOG.error("audit record of %s on key %s not written: %s", action, key_id, exc)
        if fail_closed:
            raise PKCS11Error(C.CKR_FUNCTION_FAILED, "the audit record could not be written") from None


@dataclass(frozen=True)
class Counted:
    """What a count of a governed key's uses run outside the engine (the native fast
    path, armed after its `*Init` passed `use()`) is recorded against."""
    token: object
    principal: object
    key_id: str
    key_version: int
    use: str
    mechanism: str
    handle: int                  # the key object's handle (to stop native use: fail closed)

    @property
    def action(self) -> str:
        return f"{self.principal.interface}.{self.use}"


def counted(token, key, usage: int, mech: int, principal) -> Counted | None:
    """The Counted of `key`'s use with `usage`, if it is a governed key (else None)."""
    if not governed(key):
        return None
    return Counted(token, principal, key.attrs[C.CKA_FERRO_KEY_ID].decode(errors="replace"),
                   key.attrs.get(C.CKA_FERRO_VERSION) or 0, use_of(key, usage), C.name_of("CKM_", mech),
                   key.handle)


COUNT_MESSAGE = "{mechanism}: {count} native uses"


def record_count(what: Counted, count: int, hold: bool = False) -> None:
    """The audit record of `count` uses of a governed key the native fast path ran
    since its last count: the action of the key's `*Init` (`pkcs11.encrypt`, ...), the
    count in the message (COUNT_MESSAGE). Durable before it returns; a record that
    cannot be written raises PKCS11Error(CKR_FUNCTION_FAILED): the caller stops native
    use of the key (fail closed). `hold`: as record_use's."""
    record_use(what.token, what.principal, action=what.action, key_id=what.key_id,
               key_version=what.key_version, message=COUNT_MESSAGE.format(mechanism=what.mechanism, count=count),
               fail_closed=True, hold=hold)


def use(token, key, usage: int | None, mech: int, principal, invalid: int = C.CKR_KEY_HANDLE_INVALID,
        disallowed: int = C.CKR_MECHANISM_INVALID):
    """The key `key`, checked for use with `mech` by `principal`, its sealed values
    opened. A mechanism not in its CKA_ALLOWED_MECHANISMS is `disallowed`
    (CKR_MECHANISM_INVALID, as SoftHSM2 answers, for the key an operation is started with).
    `usage` None: the key is only read (the IV counter of a message operation's key)."""
    if key.cls not in KEY_CLASSES:
        raise PKCS11Error(invalid, "not a key")
    if usage is not None and not key.flag(usage):     # (reasons are built only on failure: hot path)
        raise PKCS11Error(C.CKR_KEY_FUNCTION_NOT_PERMITTED, C.name_of("CKA_", usage) + " is false")
    allowed = key.attrs.get(C.CKA_ALLOWED_MECHANISMS)
    if allowed and mech not in allowed:
        raise PKCS11Error(disallowed, "not in CKA_ALLOWED_MECHANISMS")
    if usage is not None and C.CKA_FERRO_KEY_ID in key.attrs:
        _governed_check(token, key, use_of(key, usage), principal, mech)
    return token.open(key)


def wrap_out(token, wrapping, key, principal, approved: bool = False) -> None:
    """May `key` leave the token wrapped by `wrapping`? The rules of C_WrapKey and of the
    REST wrap alike: CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, the wrapping key's
    CKA_WRAP_TEMPLATE, then `export()` (a governed key: exportable, dual control;
    `approved`: the caller's governance consumed an approval of this export)."""
    refusal = None
    if not key.flag(C.CKA_EXTRACTABLE):
        refusal = C.CKR_KEY_UNEXTRACTABLE, "the key is not extractable"
    elif key.flag(C.CKA_WRAP_WITH_TRUSTED) and not wrapping.flag(C.CKA_TRUSTED):
        refusal = C.CKR_KEY_NOT_WRAPPABLE, "CKA_WRAP_WITH_TRUSTED needs a trusted wrapping key"
    elif not key.matches(dict(wrapping.attrs.get(C.CKA_WRAP_TEMPLATE, ()))):
        refusal = C.CKR_KEY_NOT_WRAPPABLE, "key does not match CKA_WRAP_TEMPLATE"
    if refusal is None:
        export(token, key, principal, approved)
        return
    if governed(key):
        record_use(token, principal, outcome="denied", message=refusal[1], **_event_of(key, principal, "export"))
    raise PKCS11Error(*refusal)


def export(token, key, principal, approved: bool = False) -> None:
    """A governed key leaving the token (wrapped out): only if its record says
    `exportable`, and, where its tags ask for dual control, never through PKCS#11
    (no approval can be named there): CKR_FUNCTION_REJECTED."""
    if C.CKA_FERRO_KEY_ID not in key.attrs:
        return
    _, rec = key_record(token, key.attrs[C.CKA_FERRO_KEY_ID])
    event = _event_of(key, principal, "export")
    if rec is None or not rec.exportable:
        record_use(token, principal, outcome="denied", message="not exportable", **event)
        raise PKCS11Error(C.CKR_KEY_UNEXTRACTABLE, "the governed key is not exportable")
    if not approved and dual_controlled(token, rec):
        record_use(token, principal, outcome="denied", message="export needs an approval", **event)
        raise PKCS11Error(C.CKR_FUNCTION_REJECTED, "export of this key needs dual-control approval")
    record_use(token, principal, **event, fail_closed=True)


def dual_controlled(token, rec) -> bool:
    """Does one of the key's policy tags ask for dual control? (A tag that is not found
    counts as asking: a missing tag must not lift a control.)"""
    wanted = set(rec.tags)
    if not wanted:
        return False
    found = {}
    for obj in token.index.candidates({C.CKA_CLASS: C.CKO_FERRO_POLICY_TAG}):
        if token.visible(obj) and token.loaded(obj):
            tag = R.PolicyTag.decode(token.open(obj).attrs[C.CKA_FERRO_RECORD])
            found[tag.name] = tag
    return any(name not in found or found[name].dual_control for name in wanted)


def governance_object(obj) -> bool:
    """A governance record, or a version of a governed key: lifecycle changes go
    through the governance API, never through PKCS#11."""
    return obj.cls in RECORD_CLASSES or C.CKA_FERRO_KEY_ID in obj.attrs
