"""`Governance`: the domain service of governed keys over one token.

Every transition is one `token.transaction()` that writes the key's record, the
mirrored attributes of its versions' key objects (CKA_FERRO_STATE, CKA_FERRO_PRIMARY,
the label) and its audit record (`audit(event)`, given by the caller: the audit
chain's `record_in`, which appends inside the open store transaction), so a change and
its record commit together or not at all. Each runs under the token's lock after the
head check (`token.refresh()` inside the transaction: a store whose write transaction
excludes other writers gives us the newest records and nobody in between), and again
from the start when a compare-and-set write met another process's newer version
(store Conflict), as Library.retry does.

Versions are ordinary key objects made by the engine's own key generation
(provider/keygen.py), so PKCS#11 clients use them as any key, through the gate
(provider/gate.py), which reads the same records (record.py).

Sensitive operations on a key whose policy tags ask for dual control (destroy,
rollback, export flags, adoption, weakening or detaching such a tag) do not run when
asked: they make a pending Approval and raise `approval_required` carrying it. The same
request with `approval_id` runs once a quorum of distinct operators/administrators,
never the requester, approved that exact request hash before it expired and while the
key's (or tag's) policy revision is unchanged; running consumes it.

Records are read as the store has them; the caller must have the token's user logged in
(records and versions are private objects).
"""

import base64
import binascii
import copy
import hashlib
import json
import time
import uuid
from contextlib import contextmanager

from .. import constants as C
from .. import gate, keygen
from ..backends import engine
from ..errors import PKCS11Error
from ..log import LOG
from ..principal import SCHEDULER, Principal
from ..store.base import Conflict
from . import algorithms as A
from . import migration as M
from . import record as R
from .errors import GovernanceError
from .views import ReadOnly

DAY = 86400
VALIDATION_SECONDS = DAY              # a pending version's validation window (dual signing)
DEFAULT_DESTROY_GRACE = DAY
DEFAULT_ROTATION_DAYS = 90            # a tag with auto_rotate and no rotation_period_days
APPROVERS = frozenset({"operator", "administrator"})
DONE = frozenset({"executed", "denied", "expired", "invalidated"})     # approvals that are over
TRIES = 5
MAX_NAME = 128
MAX_PAGE = 1000

RECORD_CLASS = {R.KeyRecord: C.CKO_FERRO_GOVERNED_KEY, R.PolicyTag: C.CKO_FERRO_POLICY_TAG,
                R.Approval: C.CKO_FERRO_APPROVAL, R.Migration: C.CKO_FERRO_MIGRATION}


def request_hash(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fail(code: str, message: str):
    raise GovernanceError(code, message)


class _Pending:
    """What a guarded transition returns instead of running: the approval it made."""

    def __init__(self, approval: R.Approval):
        self.approval = approval


class Governance:
    def __init__(self, token, audit=lambda event: None, backends=None, separated: bool = False,
                 clock=time.time, validation_seconds: int = VALIDATION_SECONDS, placement=None,
                 approval_retention_days: float | None = None):
        self.token = token
        self.approval_retention_days = approval_retention_days   # completed approvals kept this long (None: ever)
        # (security level the key's tags ask, backend name) -> why not, or None: the
        # environment's rule (backends' check_placement with the environment bound); None: no rule
        self.placement = placement
        self.audit = audit                 # event dict -> None, inside the open store transaction
        self.backends = backends           # provider.backends.engine.Backends, or None: the engine makes keys
        self.separated = separated         # [policy] key_separation
        self.clock = clock
        self.validation_seconds = validation_seconds
        self._events: list = []
        self._fresh: set = set()           # uids of key objects this transaction made (not yet indexed)

    # --- reading records ------------------------------------------------------------
    @contextmanager
    def _reading(self):
        """Under the token's lock, after the head check, the user logged in."""
        with self.token.lock:
            self.token.refresh()
            self._ready()
            yield

    def _ready(self) -> None:
        if not self.token.initialized or self.token.user != C.CKU_USER:
            _fail("failed_precondition", "the token's user is not logged in")

    def _objects(self, cls: int, label: str | None = None) -> list:
        token = self.token
        wanted = {C.CKA_CLASS: cls} if label is None else {C.CKA_CLASS: cls, C.CKA_LABEL: label.encode()}
        return [o for o in token.index.candidates(wanted)
                if token.visible(o) and token.loaded(o) and C.CKA_FERRO_RECORD in o.attrs
                and (label is None or token.matches(o, wanted))]

    def _decoded(self, kind, obj):
        """The record `obj` holds (decoded once per stored version: Obj.cache, emptied by
        any change; the gate reads the same one). Never changed: writers take a copy
        (`_mutable`), readers outside this class get a copy or a `ReadOnly` view."""
        rec = obj.cache.get(gate.RECORD)
        if rec is None:
            rec = obj.cache[gate.RECORD] = kind.decode(self.token.open(obj).attrs[C.CKA_FERRO_RECORD])
        return rec

    def _find_key(self, id_or_name: str):
        """(record object, KeyRecord) of a key named by id or name, or not_found."""
        self._ready()
        if not isinstance(id_or_name, str) or not id_or_name:
            _fail("invalid_argument", "a key id or name is required")
        try:
            uuid.UUID(id_or_name)
            obj, rec = gate.key_record(self.token, id_or_name.encode())
            if obj is not None:
                return obj, rec
        except ValueError:
            pass
        for obj in self._objects(C.CKO_FERRO_GOVERNED_KEY, id_or_name):
            rec = self._decoded(R.KeyRecord, obj)
            if rec.name == id_or_name:
                return obj, rec
        _fail("not_found", f"no governed key {id_or_name!r}")

    def _find(self, kind, label: str):
        for obj in self._objects(RECORD_CLASS[kind], label):
            rec = self._decoded(kind, obj)
            if (rec.name if kind is R.PolicyTag else rec.id) == label:
                return obj, rec
        return None, None

    @staticmethod
    def _mutable(rec):
        return copy.deepcopy(rec)

    def get_key(self, id_or_name: str) -> R.KeyRecord:
        """A copy of the key's record, the caller's to change."""
        with self.token.lock:
            self.token.refresh()
            return self._mutable(self._find_key(id_or_name)[1])

    def read_key(self, id_or_name: str) -> "ReadOnly":
        """The key's record as a `ReadOnly` view of the one decoded and cached on its
        object (no copy: a key use's lookup). The caller holds the token's lock and made
        the head check (Token.refresh) whose state it means to use."""
        return ReadOnly(self._find_key(id_or_name)[1])

    def list_keys(self, tag=None, state=None, algorithm=None, name_prefix=None, page_token=None,
                  page_size: int = 100) -> tuple:
        """(copies of the keys of a page sorted by name, the page token of the next page
        or None): `key_page`'s page, the caller's to change."""
        page, next_token = self.key_page(tag, state, algorithm, name_prefix, page_token, page_size)
        return [self._mutable(k._of) for k in page], next_token

    def key_page(self, tag=None, state=None, algorithm=None, name_prefix=None, page_token=None,
                 page_size: int = 100) -> tuple:
        """(`ReadOnly` views of the keys of a page sorted by name, the page token of the
        next page or None). The page token is the last name of the page (opaque to
        callers). The records are sorted by their objects' labels (a key record's label
        is its name, `_save`): only the page's records and those a filter reads are
        decoded, none is copied."""
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            _fail("invalid_argument", f"page_size must be 1..{MAX_PAGE}")
        if state is not None and state not in R.STATE_CODE:
            _fail("invalid_argument", f"unknown state {state!r}")
        if algorithm is not None and algorithm not in A.SPECS:
            _fail("invalid_argument", f"unknown algorithm {algorithm!r}")
        after = _page_after(page_token)
        prefix = b"" if name_prefix is None else name_prefix.encode()
        after_label = None if after is None else after.encode()
        page = []
        with self._reading():
            named = sorted(((o.attrs[C.CKA_LABEL], o) for o in self._objects(C.CKO_FERRO_GOVERNED_KEY)
                            if o.attrs[C.CKA_LABEL].startswith(prefix)
                            and (after_label is None or o.attrs[C.CKA_LABEL] > after_label)), key=_first)
            for _, obj in named:
                k = self._decoded(R.KeyRecord, obj)
                if (after is None or k.name > after) and (tag is None or tag in k.tags) \
                        and (algorithm is None or k.algorithm == algorithm) \
                        and (state is None or any(v.state == state for v in k.versions)):
                    if len(page) == page_size:
                        return page, _page_token(page[-1].name)
                    page.append(ReadOnly(k))
        return page, None

    def get_tag(self, name: str) -> R.PolicyTag:
        with self._reading():
            _, tag = self._find(R.PolicyTag, name)
        if tag is None:
            _fail("not_found", f"no policy tag {name!r}")
        return self._mutable(tag)

    def list_tags(self) -> list:
        with self._reading():
            tags = [self._decoded(R.PolicyTag, o) for o in self._objects(C.CKO_FERRO_POLICY_TAG)]
        return sorted((self._mutable(t) for t in tags), key=lambda t: t.name)

    def list_approvals(self, status=None) -> list:
        with self._reading():
            found = [self._decoded(R.Approval, o) for o in self._objects(C.CKO_FERRO_APPROVAL)]
        return sorted((self._mutable(a) for a in found if status is None or a.status == status),
                      key=lambda a: (a.created_at, a.id))

    def get_approval(self, approval_id: str) -> R.Approval:
        with self._reading():
            _, found = self._find(R.Approval, approval_id)
        if found is None:
            _fail("not_found", f"no approval {approval_id!r}")
        return self._mutable(found)

    def list_migrations(self, key: str | None = None) -> list:
        """Migrations (of `key`, by id or name, if given), oldest first."""
        with self._reading():
            key_id = None if key is None else self._find_key(key)[1].id
            found = [self._decoded(R.Migration, o) for o in self._objects(C.CKO_FERRO_MIGRATION)]
        return sorted((self._mutable(m) for m in found if key_id is None or m.key_id == key_id),
                      key=lambda m: (m.created_at, m.id))

    def get_migration(self, migration_id: str) -> R.Migration:
        with self._reading():
            _, found = self._find(R.Migration, migration_id) if isinstance(migration_id, str) else (None, None)
        if found is None:
            _fail("not_found", f"no migration {migration_id!r}")
        return self._mutable(found)

    # --- writing ----------------------------------------------------------------------
    def _write(self, step, actor: Principal = SCHEDULER, action: str = "", subject: str | None = None):
        """Run `step()` (reads, checks, writes, audit events) as one store transaction
        under the token's lock after the head check; again from the start on Conflict.
        A step returning _Pending committed an approval request: approval_required.
        A refusal is audited on its own (outcome "denied"); an audit record that cannot
        be written refuses the change (fail closed: `unavailable`, nothing written)."""
        token = self.token
        with token.lock:
            try:
                result = self._attempts(step)
            except GovernanceError as err:
                if err.code not in ("approval_required", "unavailable"):
                    self._refused(actor, action, subject, err)
                raise
        if isinstance(result, _Pending):
            raise GovernanceError("approval_required", f"{result.approval.action} needs dual-control approval "
                                  f"(approval {result.approval.id})", approval=result.approval)
        return result

    def _attempts(self, step):
        token = self.token
        for _ in range(TRIES):
            self._events, self._fresh = [], set()
            try:
                with token.transaction():
                    token.refresh()
                    self._ready()
                    result = step()
                    self._flush()
                return result
            except Conflict:
                token.refresh()
            except PKCS11Error as err:           # the engine refused (a key template, a device)
                raise GovernanceError("failed_precondition", err.reason or C.name_of("CKR_", err.rv)) from None
            finally:
                self._events, self._fresh = [], set()
        _fail("conflict", "the records kept changing in the store; try again")

    def _flush(self) -> None:
        """Hand the transition's audit events to the audit log, inside its transaction."""
        for event in self._events:
            try:
                self.audit(event)
            except Exception as exc:        # noqa: BLE001 - any failure to record refuses the change
                LOG.error("governance: audit record of %s not written (%s): nothing changed",
                          event["action"], type(exc).__name__)
                raise GovernanceError("unavailable", "the audit record could not be written; nothing "
                                      "was changed") from None

    def _refused(self, actor: Principal, action: str, subject, err: GovernanceError) -> None:
        """Audit a refused request in a transaction of its own (best effort: the
        refusal stands whether or not its record is written)."""
        self._events = []
        self._event(actor, action if "." in action else f"key.{action}", None, outcome="denied",
                    message=err.message, key_id=None, subject=subject if isinstance(subject, str) else None,
                    code=err.code)
        try:
            with self.token.transaction():
                self._flush()
        except GovernanceError:
            pass
        finally:
            self._events = []

    def _event(self, actor: Principal, action: str, key: R.KeyRecord | None = None, version: int | None = None,
               outcome: str = "ok", message: str = "", **extra) -> None:
        self._events.append(dict(actor=actor, action=action, key_id=key.id if key else extra.pop("key_id", None),
                                 key_version=version, outcome=outcome, message=message,
                                 time=self.clock(), **extra))

    def _save(self, rec, obj=None) -> None:
        """Write a record (a new object when `obj` is None)."""
        label = rec.name if isinstance(rec, R.PolicyTag) else (rec.name if isinstance(rec, R.KeyRecord) else rec.id)
        key_id = rec.id if isinstance(rec, R.KeyRecord) else getattr(rec, "key_id", None) or ""
        attrs = {C.CKA_CLASS: RECORD_CLASS[type(rec)], C.CKA_TOKEN: True, C.CKA_PRIVATE: True,
                 C.CKA_MODIFIABLE: False, C.CKA_DESTROYABLE: False, C.CKA_COPYABLE: False,
                 C.CKA_LABEL: label.encode(), C.CKA_FERRO_KEY_ID: key_id.encode(),
                 C.CKA_FERRO_RECORD: R.encode(rec)}
        if obj is None:
            keygen.add_object(self.token, attrs)
        else:
            self.token.open(obj)
            self.token.update_object(obj, {**obj.attrs, **attrs, C.CKA_UNIQUE_ID: obj.attrs[C.CKA_UNIQUE_ID]})

    def _key_for_write(self, key: str):
        obj, rec = self._find_key(key)
        return obj, self._mutable(rec)

    def _version(self, rec: R.KeyRecord, number) -> R.Version:
        if not isinstance(number, int) or isinstance(number, bool):
            _fail("invalid_argument", "a version number is an integer")
        version = rec.version(number)
        if version is None:
            _fail("not_found", f"key {rec.name} has no version {number}")
        return version

    def _require_state(self, rec: R.KeyRecord, number, allowed, why: str = "") -> R.Version:
        """Version `number` of `rec` if its state is one of `allowed`, else failed_precondition."""
        v = self._version(rec, number)
        if v.state not in allowed:
            _fail("failed_precondition", f"version {number} of {rec.name} is {v.state}{why}")
        return v

    def _commit_key(self, obj, rec: R.KeyRecord) -> None:
        """Write the key record and mirror each version's state, primary and label onto
        its key objects."""
        self._check_invariants(rec)
        self._save(rec, obj)
        token = self.token
        for v in rec.versions:
            if v.state == R.DESTROYED:
                continue
            wanted = _mirrored(rec, v)
            for uid in v.objects:
                if uid in self._fresh:           # made with these attributes in this transaction
                    continue
                kobj = token.by_uid.get(uid)
                if kobj is None or not token.loaded(kobj):
                    _fail("failed_precondition", f"the key object of {rec.name} v{v.number} is missing")
                if any(kobj.attrs.get(k) != val for k, val in wanted.items()):
                    token.open(kobj)
                    token.update_object(kobj, {**kobj.attrs, **wanted})

    @staticmethod
    def _check_invariants(rec: R.KeyRecord) -> None:
        """What no transition may break (a bug here refuses the write, never stores it)."""
        primary = rec.version(rec.primary)
        numbers = [v.number for v in rec.versions]
        assert primary is not None and primary.state == R.ENABLED, "the primary is an enabled version"
        assert numbers == sorted(set(numbers)) and max(numbers) < rec.next_version, "versions never reused"
        assert rec.min_decrypt_version <= rec.min_encrypt_version <= rec.primary, "floors below the primary"

    # --- policy of a key --------------------------------------------------------------
    def _tags_of(self, rec: R.KeyRecord) -> list:
        tags = []
        for name in rec.tags:
            _, tag = self._find(R.PolicyTag, name)
            # a tag that is gone counts as asking for dual control: a missing tag lifts no control
            tags.append(tag if tag is not None else R.PolicyTag(name=name, dual_control=True))
        return tags

    def _dual(self, tags: list):
        """(quorum, approval lifetime) if one of `tags` asks for dual control, else None."""
        dual = [t for t in tags if t.dual_control]
        if not dual:
            return None
        return max(max(2, t.quorum) for t in dual), min(t.approval_ttl_seconds for t in dual)

    @staticmethod
    def _next_rotation(rec_days, tags: list, now: float):
        """When a key's automatic rotation is next due, counted from `now`: after its own
        period, else the shortest its tags ask (tag_rotation_days); None: no automatic
        rotation."""
        if rec_days is None:
            periods = [d for d in map(tag_rotation_days, tags) if d is not None]
            rec_days = min(periods) if periods else None
        return now + rec_days * DAY if rec_days else None

    def _guard(self, actor: Principal, action: str, request: dict, dual, revision: int, key_id, approval_id):
        """None if the request may run now (no dual control, or `approval_id` names an
        approved approval of exactly this request, which is consumed), else a _Pending."""
        if dual is None:
            return None
        quorum, ttl = dual
        request = {"action": action, **request}
        digest = request_hash(request)
        now = self.clock()
        if approval_id is None:
            approval = R.Approval(id=str(uuid.uuid4()), action=action, request=request, request_hash=digest,
                                  requester=actor.subject, key_id=key_id, created_at=now, expires_at=now + ttl,
                                  policy_revision=revision, quorum=quorum)
            self._save(approval)
            self._event(actor, "approval.requested", key_id=key_id, approval_id=approval.id,
                        message=f"{action} needs {quorum} approvals")
            return _Pending(approval)
        obj, found = self._find(R.Approval, approval_id) if isinstance(approval_id, str) else (None, None)
        if found is None:
            _fail("not_found", f"no approval {approval_id!r}")
        approval = self._mutable(found)
        if approval.request_hash != digest:
            _fail("permission_denied", f"approval {approval.id} is for another request")
        if approval.status == "pending" and approval.policy_revision != revision:
            approval.status = "invalidated"
        if approval.status == "pending" and now >= approval.expires_at:
            approval.status = "expired"
        if approval.status != found.status:
            self._save(approval, obj)
            self._event(SCHEDULER, f"approval.{approval.status}", key_id=key_id, approval_id=approval.id)
            return _Closed(approval)
        if approval.status == "pending":
            raise GovernanceError("approval_required", f"approval {approval.id} has "
                                  f"{len(approval.approvals)} of {approval.quorum} approvals", approval=approval)
        if approval.status != "approved":
            _fail("failed_precondition", f"approval {approval.id} is {approval.status}")
        if approval.policy_revision != revision or now >= approval.expires_at:
            approval.status = "invalidated" if approval.policy_revision != revision else "expired"
            self._save(approval, obj)
            self._event(SCHEDULER, f"approval.{approval.status}", key_id=key_id, approval_id=approval.id)
            return _Closed(approval)
        approval.status = "executed"
        self._save(approval, obj)
        self._event(actor, "approval.executed", key_id=key_id, approval_id=approval.id, message=action)
        return None

    # --- keys -------------------------------------------------------------------------
    def create_key(self, actor: Principal, name: str, algorithm: str, usage, description: str = "",
                   owner: str = "", tags=(), rotation_period_days=None) -> R.KeyRecord:
        _check_name(name)
        spec = A.SPECS.get(algorithm)
        if spec is None:
            _fail("invalid_argument", f"algorithm must be one of {', '.join(A.SPECS)}")
        usage = _check_usage(usage, spec, algorithm)
        tags = _check_tag_names(tags)
        _check_period(rotation_period_days)
        if not isinstance(description, str) or not isinstance(owner, str):
            _fail("invalid_argument", "description and owner are strings")

        pair = self._prepare(algorithm, name, exportable=False)

        def step():
            if self._find_by_name(name) is not None:
                _fail("conflict", f"a governed key named {name!r} exists")
            tag_records = self._existing_tags(tags)
            now = self.clock()
            rec = R.KeyRecord(id=str(uuid.uuid4()), name=name, algorithm=algorithm, usage=usage, created_at=now,
                              owner=owner, description=description, tags=list(tags),
                              rotation_period_days=rotation_period_days)
            rec.next_rotation_at = self._next_rotation(rotation_period_days, tag_records, now)
            rec.versions.append(self._make_version(rec, 1, R.ENABLED, now, pair))
            self._commit_key(None, rec)
            self._event(actor, "key.create", rec, 1, message=f"{algorithm} {','.join(usage)}")
            return rec
        return self._kept(pair, lambda: self._write(step, actor, "create", name))

    def _find_by_name(self, name: str):
        for obj in self._objects(C.CKO_FERRO_GOVERNED_KEY, name):
            if self._decoded(R.KeyRecord, obj).name == name:
                return obj
        return None

    def _existing_tags(self, names) -> list:
        found = []
        for name in names:
            _, tag = self._find(R.PolicyTag, name)
            if tag is None:
                _fail("not_found", f"no policy tag {name!r}")
            found.append(tag)
        return found

    # --- a version's key material ------------------------------------------------------
    def _prepare(self, algorithm: str, name: str, exportable: bool):
        """A key pair's material for `algorithm`, made before (outside) the store
        transaction that keeps it, with the token's lock let go while it is generated
        (RSA-4096 takes seconds: the transaction stays short and other calls go on);
        None for a secret key (made in the transaction: it is fast). The version number
        is assigned inside the transaction (`_make_version`), so versions strictly
        increase however many callers rotate at once."""
        spec = A.SPECS[algorithm]
        if not spec.pair:
            return None
        pub, priv = _pair_templates(spec, {C.CKA_LABEL: name.encode()}, exportable)
        with self.token.lock:
            self.token.refresh()
            self._ready()
            try:
                return keygen.prepare_pair(self.token, spec.mech, None, pub, priv, self.backends)
            except PKCS11Error as err:
                raise GovernanceError("failed_precondition", err.reason or C.name_of("CKR_", err.rv)) from None

    def _kept(self, pair, write):
        """Run `write()` (a _write that stores `pair`); a device key it did not keep is
        destroyed."""
        try:
            result = write()
            if pair is not None:           # kept if the object made from it committed
                pair.kept = pair.stored is not None and pair.stored in self.token.by_uid
            return result
        finally:
            if pair is not None:
                pair.discard()

    def _make_version(self, rec: R.KeyRecord, number: int, state: str, now: float, pair=None) -> R.Version:
        """Version `number`'s key object(s) into the token (in the open transaction): a
        secret key generated here, a pair from the material `_prepare` made."""
        spec = A.SPECS[rec.algorithm]
        common, engine_set = _version_attrs(rec, number, state)
        if spec.pair:
            if pair is None or (pair.backend is not None and pair.exportable != bool(rec.exportable)):
                _fail("conflict", f"{rec.name} changed while its new version was generated; try again")
            pub, priv = _pair_templates(spec, common, rec.exportable)
            pub.update(A.usage_flags(rec.usage, 1))
            priv.update(A.usage_flags(rec.usage, 2))
            made = keygen.store_pair(self.token, pair, pub, priv, self.separated, (engine_set, engine_set))
            backend = made[1].attrs.get(C.CKA_FERRO_BACKEND, b"soft").decode()
            uids = [made[1].uid, made[0].uid]
        else:
            given = {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: spec.key_type, **common,
                     C.CKA_SENSITIVE: True, C.CKA_EXTRACTABLE: bool(rec.exportable),
                     **spec.secret, **A.usage_flags(rec.usage, 0)}
            made = keygen.generate_key(self.token, spec.mech, None, given, self.separated, engine_set)
            backend, uids = "soft", [made.uid]
        self._fresh.update(uids)
        self._check_placement(rec, backend)
        return R.Version(number=number, state=state, created_at=now, objects=uids, backend=backend,
                         enabled_at=now if state == R.ENABLED else now + self.validation_seconds)

    def _check_placement(self, rec: R.KeyRecord, backend: str) -> None:
        """A version on a backend its tags' security level (or the environment) refuses is
        not kept (the transaction rolls back)."""
        if self.placement is None:
            return
        tags = self._tags_of(rec)
        level = "hardware" if any(t.security_level == "hardware" for t in tags) else "software"
        reason = self.placement(level, backend)
        if reason:
            _fail("failed_precondition", f"{rec.name}: {reason}")

    def rotate(self, actor: Principal, key: str, pending: bool = False) -> R.KeyRecord:
        """Make version N+1 and move primary to it; `pending`: it waits out the validation
        window (the scheduler then enables it and makes it primary). A pair's material is
        generated first, outside the transaction (`_prepare`)."""
        try:
            current = self.get_key(key)
        except GovernanceError:            # refused (and audited) by the step below
            current = None
        pair = None if current is None else self._prepare(current.algorithm, current.name, current.exportable)

        def step():
            obj, rec = self._key_for_write(key)
            return self._rotate(actor, obj, rec, pending, "key.rotate", pair)
        return self._kept(pair, lambda: self._write(step, actor, "rotate", key))

    def _rotate(self, actor, obj, rec: R.KeyRecord, pending: bool, action: str, pair) -> R.KeyRecord:
        now = self.clock()
        number = rec.next_version
        rec.next_version += 1
        if not pending:
            rec.primary = number           # (before the version is made: its label is the key's name)
        rec.versions.append(self._make_version(rec, number, R.PENDING if pending else R.ENABLED, now, pair))
        rec.next_rotation_at = self._next_rotation(rec.rotation_period_days, self._tags_of(rec), now)
        self._commit_key(obj, rec)
        self._event(actor, action, rec, number, message="pending" if pending else "primary")
        return rec

    def update_primary(self, actor: Principal, key: str, version: int, approval_id=None) -> R.KeyRecord:
        """Make an enabled version primary again (rollback); dual-controlled."""
        def step():
            obj, rec = self._key_for_write(key)
            self._require_state(rec, version, (R.ENABLED,), ": only an enabled version becomes primary")
            if version < rec.min_encrypt_version:
                _fail("failed_precondition", f"version {version} is below min_encrypt_version")
            if version == rec.primary:
                return rec
            held = self._guard(actor, "rollback", {"key_id": rec.id, "version": version},
                               self._dual(self._tags_of(rec)), rec.policy_revision, rec.id, approval_id)
            if held is not None:
                return held
            rec.primary = version
            self._commit_key(obj, rec)
            self._event(actor, "key.update_primary", rec, version)
            return rec
        return _closed(self._write(step, actor, "update_primary", key))

    def enable_version(self, actor: Principal, key: str, version: int) -> R.KeyRecord:
        def step():
            obj, rec = self._key_for_write(key)
            v = self._require_state(rec, version, (R.DISABLED, R.PENDING))
            if v.revocation and v.revocation["reason"] in R.COMPROMISED:
                _fail("failed_precondition", f"version {version} was revoked for {v.revocation['reason']}: "
                      "never usable again")
            v.state, v.enabled_at, v.disabled_at = R.ENABLED, self.clock(), None
            self._commit_key(obj, rec)
            self._event(actor, "key.enable_version", rec, version)
            return rec
        return self._write(step, actor, "enable_version", key)

    def disable_version(self, actor: Principal, key: str, version: int) -> R.KeyRecord:
        def step():
            obj, rec = self._key_for_write(key)
            self._disable(rec, version, "disable")
            self._commit_key(obj, rec)
            self._event(actor, "key.disable_version", rec, version)
            return rec
        return self._write(step, actor, "disable_version", key)

    def _disable(self, rec: R.KeyRecord, version: int, what: str) -> R.Version:
        # a disabled version may still be revoked (its reason recorded)
        v = self._require_state(rec, version, (R.ENABLED, R.PENDING) + ((R.DISABLED,) if what == "revoke" else ()))
        if version == rec.primary:
            _fail("failed_precondition", f"version {version} is the primary: rotate or update the primary "
                  f"before you {what} it")
        v.state, v.disabled_at = R.DISABLED, self.clock()
        return v

    def revoke(self, actor: Principal, key: str, version: int, reason: str) -> R.KeyRecord:
        """Disable a version and record why (RFC 5280 reasons); a compromised one never returns."""
        if reason not in R.REVOCATION_REASONS:
            _fail("invalid_argument", f"reason must be one of {', '.join(R.REVOCATION_REASONS)}")

        def step():
            obj, rec = self._key_for_write(key)
            v = self._disable(rec, version, "revoke")
            v.revocation = {"reason": reason, "at": self.clock(), "by": actor.subject}
            self._commit_key(obj, rec)
            self._event(actor, "key.revoke", rec, version, message=reason)
            return rec
        return self._write(step, actor, "revoke", key)

    def schedule_destroy(self, actor: Principal, key: str, version: int, approval_id=None) -> R.KeyRecord:
        """Destroy a version when its tags' grace period ends (restore cancels);
        refused within a tag's retention window; dual-controlled."""
        def step():
            obj, rec = self._key_for_write(key)
            v = self._require_state(rec, version, (R.ENABLED, R.DISABLED, R.PENDING))
            if version == rec.primary:
                _fail("failed_precondition", f"version {version} is the primary: rotate or update the primary first")
            tags = self._tags_of(rec)
            now = self.clock()
            retention = max((t.retention_days for t in tags), default=0)
            if now - v.created_at < retention * DAY:
                _fail("failed_precondition", f"version {version} is inside its {retention}-day retention window")
            held = self._guard(actor, "destroy", {"key_id": rec.id, "version": version}, self._dual(tags),
                               rec.policy_revision, rec.id, approval_id)
            if held is not None:
                return held
            grace = max((t.destroy_grace_seconds for t in tags), default=DEFAULT_DESTROY_GRACE)
            v.state, v.destroy_at = R.DESTROY_SCHEDULED, now + grace
            self._commit_key(obj, rec)
            self._event(actor, "key.schedule_destroy", rec, version, message=f"destroy at {v.destroy_at:.0f}")
            return rec
        return _closed(self._write(step, actor, "schedule_destroy", key))

    def restore(self, actor: Principal, key: str, version: int) -> R.KeyRecord:
        """Cancel a scheduled destruction: the version comes back disabled."""
        def step():
            obj, rec = self._key_for_write(key)
            v = self._require_state(rec, version, (R.DESTROY_SCHEDULED,))
            v.state, v.destroy_at, v.disabled_at = R.DISABLED, None, self.clock()
            self._commit_key(obj, rec)
            self._event(actor, "key.restore", rec, version)
            return rec
        return self._write(step, actor, "restore", key)

    def set_floors(self, actor: Principal, key: str, min_decrypt_version=None,
                   min_encrypt_version=None) -> R.KeyRecord:
        """Raise min_decrypt_version / min_encrypt_version (one way: they only rise;
        min_encrypt >= min_decrypt; neither above the primary)."""
        for value in (min_decrypt_version, min_encrypt_version):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                _fail("invalid_argument", "a floor is a version number (>= 1)")

        def step():
            obj, rec = self._key_for_write(key)
            dec = rec.min_decrypt_version if min_decrypt_version is None else min_decrypt_version
            enc = rec.min_encrypt_version if min_encrypt_version is None else min_encrypt_version
            if dec < rec.min_decrypt_version or enc < rec.min_encrypt_version:
                _fail("failed_precondition", "floors only rise")
            enc = max(enc, dec)            # min_encrypt_version >= min_decrypt_version
            if enc > rec.primary:
                _fail("failed_precondition", f"a floor above the primary (v{rec.primary}) would leave no "
                      "version to encrypt with")
            if (dec, enc) == (rec.min_decrypt_version, rec.min_encrypt_version):
                return rec
            rec.min_decrypt_version, rec.min_encrypt_version = dec, enc
            rec.policy_revision += 1
            self._commit_key(obj, rec)
            self._event(actor, "key.set_floors", rec, message=f"min_decrypt {dec} min_encrypt {enc}")
            return rec
        return self._write(step, actor, "set_floors", key)

    def set_flags(self, actor: Principal, key: str, exportable=None, allow_plaintext_backup=None,
                  approval_id=None) -> R.KeyRecord:
        """Set the one-way flags (never unset); an export flag is dual-controlled.
        Versions made from then on are CKA_EXTRACTABLE when `exportable`."""
        for value in (exportable, allow_plaintext_backup):
            if value is not None and not isinstance(value, bool):
                _fail("invalid_argument", "a flag is true or false")

        def step():
            obj, rec = self._key_for_write(key)
            if exportable is False and rec.exportable or allow_plaintext_backup is False and \
                    rec.allow_plaintext_backup:
                _fail("failed_precondition", "exportable and allow_plaintext_backup are never unset")
            changes = {k: True for k, v in (("exportable", exportable),
                                            ("allow_plaintext_backup", allow_plaintext_backup))
                       if v and not getattr(rec, k)}
            if not changes:
                return rec
            held = self._guard(actor, "export", {"key_id": rec.id, "flags": sorted(changes)},
                               self._dual(self._tags_of(rec)), rec.policy_revision, rec.id, approval_id)
            if held is not None:
                return held
            for k in changes:
                setattr(rec, k, True)
            rec.policy_revision += 1
            self._commit_key(obj, rec)
            self._event(actor, "key.set_flags", rec, message=",".join(sorted(changes)))
            return rec
        return _closed(self._write(step, actor, "set_flags", key))

    def adopt(self, actor: Principal, uid: str, name: str, algorithm: str, usage, public_uid: str | None = None,
              description: str = "", owner: str = "", tags=(), approval_id=None) -> R.KeyRecord:
        """Take a plain PKCS#11 key (a secret key, or a private key with its public key
        `public_uid`) into governance as version 1: it becomes unmodifiable and
        undestroyable through PKCS#11. Only an administrator; dual-controlled by `tags`."""
        _check_name(name)
        spec = A.SPECS.get(algorithm)
        if spec is None:
            _fail("invalid_argument", f"algorithm must be one of {', '.join(A.SPECS)}")
        usage = _check_usage(usage, spec, algorithm)
        tags = _check_tag_names(tags)

        def step():
            if "administrator" not in actor.roles:
                _fail("permission_denied", "only an administrator adopts a key")
            token = self.token
            objs = [token.by_uid.get(u) if isinstance(u, str) else None
                    for u in ([uid, public_uid] if spec.pair else [uid])]
            if any(o is None or not token.loaded(o) for o in objs):
                _fail("not_found", "no such key object")
            want = [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY] if spec.pair else [C.CKO_SECRET_KEY]
            for o, cls in zip(objs, want):
                if o.cls != cls or not o.token or not A.of_key(algorithm, cls, o.attrs):
                    _fail("invalid_argument", f"object {o.uid} is not a token {algorithm} "
                          f"{C.name_of('CKO_', cls)} key")
                if gate.governance_object(o):
                    _fail("failed_precondition", f"object {o.uid} is governed already")
            if spec.pair and objs[0].attrs.get(C.CKA_PUBLIC_KEY_INFO) not in (None, b"", objs[1].attrs.get(
                    C.CKA_PUBLIC_KEY_INFO)):
                _fail("invalid_argument", "the public key is not the private key's")
            if self._find_by_name(name) is not None:
                _fail("conflict", f"a governed key named {name!r} exists")
            tag_records = self._existing_tags(tags)
            held = self._guard(actor, "adopt", {"uid": uid, "public_uid": public_uid, "name": name,
                                                "algorithm": algorithm, "usage": usage, "tags": list(tags)},
                               self._dual(tag_records), 1, None, approval_id)
            if held is not None:
                return held
            now = self.clock()
            rec = R.KeyRecord(id=str(uuid.uuid4()), name=name, algorithm=algorithm, usage=usage, created_at=now,
                              owner=owner, description=description, tags=list(tags), adopted_from=uid)
            rec.next_rotation_at = self._next_rotation(None, tag_records, now)
            rec.versions.append(R.Version(number=1, state=R.ENABLED, created_at=now, enabled_at=now,
                                          objects=[o.uid for o in objs],
                                          backend=objs[0].attrs.get(C.CKA_FERRO_BACKEND, b"soft").decode()))
            for o, half in zip(objs, (2, 1) if spec.pair else (0,)):
                token.open(o)
                token.update_object(o, {**o.attrs, C.CKA_MODIFIABLE: False, C.CKA_DESTROYABLE: False,
                                        C.CKA_COPYABLE: False, C.CKA_ID: f"{rec.id}/v1".encode(),
                                        C.CKA_FERRO_KEY_ID: rec.id.encode(), C.CKA_FERRO_VERSION: 1,
                                        **_mirrored(rec, rec.versions[0]), **A.usage_flags(usage, half)})
                self._fresh.add(o.uid)
            self._commit_key(None, rec)
            self._event(actor, "key.adopt", rec, 1, message=f"from object {uid}")
            return rec
        return _closed(self._write(step, actor, "adopt", name))

    def migrate(self, actor: Principal, key: str, destination_backend: str, approval_id=None) -> R.Migration:
        """Move the key's versions that have material to `destination_backend`
        (governance/migration.py): dual-controlled; its Migration record goes
        in_progress -> completed (or failed / rolled_back, nothing half-done left), each
        step audited; the source copies are kept, unusable, for 30 days."""
        return M.run(self, actor, key, destination_backend, approval_id)

    # --- policy tags ------------------------------------------------------------------
    def put_tag(self, actor: Principal, tag: R.PolicyTag, approval_id=None) -> R.PolicyTag:
        """Create or change a tag. Weakening a dual-control tag is itself dual-controlled;
        any change raises the policy revision of the keys under it (their pending
        approvals no longer execute)."""
        _check_tag(tag)

        def step():
            obj, old = self._find(R.PolicyTag, tag.name)
            new = self._mutable(tag)
            new.revision = 1 if old is None else old.revision + 1
            if old is not None:
                if _same_policy(old, new):
                    return old
                if old.dual_control and _weaker(old, new):
                    held = self._guard(actor, "weaken_tag", {"tag": R.encode(tag).decode()}, self._dual([old]),
                                       old.revision, None, approval_id)
                    if held is not None:
                        return held
                self._bump_keys(new)
            self._save(new, obj)
            self._event(actor, "tag.put", key_id=None, tag=tag.name, message=f"revision {new.revision}")
            return new
        return _closed(self._write(step, actor, "tag.put", tag.name))

    def _bump_keys(self, tag: R.PolicyTag) -> None:
        """The keys under `tag` after its change: policy revision +1; a key that had no
        automatic rotation and now gets one from the tag is scheduled from now."""
        for kobj in self._objects(C.CKO_FERRO_GOVERNED_KEY):
            rec = self._decoded(R.KeyRecord, kobj)
            if tag.name in rec.tags:
                rec = self._mutable(rec)
                rec.policy_revision += 1
                if rec.next_rotation_at is None:
                    tags = [tag if t.name == tag.name else t for t in self._tags_of(rec)]
                    rec.next_rotation_at = self._next_rotation(rec.rotation_period_days, tags, self.clock())
                self._save(rec, kobj)

    def attach_tag(self, actor: Principal, key: str, tag: str) -> R.KeyRecord:
        def step():
            obj, rec = self._key_for_write(key)
            self._existing_tags([tag])
            if tag in rec.tags:
                return rec
            rec.tags.append(tag)
            for v in rec.versions:           # a hardware tag on a key held in software: refused
                if v.state != R.DESTROYED:
                    self._check_placement(rec, v.backend)
            rec.policy_revision += 1
            if rec.next_rotation_at is None:
                rec.next_rotation_at = self._next_rotation(rec.rotation_period_days, self._tags_of(rec), self.clock())
            self._commit_key(obj, rec)
            self._event(actor, "key.attach_tag", rec, message=tag)
            return rec
        return self._write(step, actor, "attach_tag", key)

    def detach_tag(self, actor: Principal, key: str, tag: str, approval_id=None) -> R.KeyRecord:
        """Detaching a dual-control tag is dual-controlled (it lifts a control)."""
        def step():
            obj, rec = self._key_for_write(key)
            if tag not in rec.tags:
                _fail("not_found", f"{rec.name} has no tag {tag!r}")
            tags = [t for t in self._tags_of(rec) if t.name == tag]
            held = self._guard(actor, "detach_tag", {"key_id": rec.id, "tag": tag}, self._dual(tags),
                               rec.policy_revision, rec.id, approval_id)
            if held is not None:
                return held
            rec.tags.remove(tag)
            rec.policy_revision += 1
            self._commit_key(obj, rec)
            self._event(actor, "key.detach_tag", rec, message=tag)
            return rec
        return _closed(self._write(step, actor, "detach_tag", key))

    # --- approvals --------------------------------------------------------------------
    def approve(self, actor: Principal, approval_id: str) -> R.Approval:
        return self._decide(actor, approval_id, "approve")

    def deny(self, actor: Principal, approval_id: str) -> R.Approval:
        return self._decide(actor, approval_id, "deny")

    def _decide(self, actor: Principal, approval_id: str, what: str) -> R.Approval:
        def step():
            if not APPROVERS & set(actor.roles):
                _fail("permission_denied", "only an operator or administrator approves")
            obj, found = self._find(R.Approval, approval_id) if isinstance(approval_id, str) else (None, None)
            if found is None:
                _fail("not_found", f"no approval {approval_id!r}")
            approval = self._mutable(found)
            if approval.status != "pending":
                _fail("failed_precondition", f"approval {approval.id} is {approval.status}")
            if self.clock() >= approval.expires_at or self._revision_moved(approval):
                approval.status = "expired" if self.clock() >= approval.expires_at else "invalidated"
                self._save(approval, obj)
                self._event(SCHEDULER, f"approval.{approval.status}", key_id=approval.key_id,
                            approval_id=approval.id)
                return _Closed(approval)
            if actor.subject == approval.requester:
                _fail("permission_denied", "the requester does not approve their own request")
            if actor.subject in {a["subject"] for a in approval.approvals + approval.denials}:
                _fail("conflict", f"{actor.subject} decided on approval {approval.id} already")
            entry = {"subject": actor.subject, "at": self.clock()}
            if what == "approve":
                approval.approvals.append(entry)
                if len(approval.approvals) >= approval.quorum:
                    approval.status = "approved"
            else:
                approval.denials.append(entry)
                approval.status = "denied"
            self._save(approval, obj)
            self._event(actor, f"approval.{'approved' if what == 'approve' else 'denied'}", key_id=approval.key_id,
                        approval_id=approval.id, message=f"{len(approval.approvals)}/{approval.quorum}")
            return approval
        return _closed(self._write(step, actor, f"approval.{what}", approval_id))

    def _revision_moved(self, approval: R.Approval) -> bool:
        """Has the policy the approval was asked under changed since?"""
        if approval.key_id:
            obj, rec = gate.key_record(self.token, approval.key_id.encode())
            return rec is None or rec.policy_revision != approval.policy_revision
        if approval.action == "weaken_tag":
            name = json.loads(approval.request["tag"])["name"]
            _, tag = self._find(R.PolicyTag, name)
            return tag is None or tag.revision != approval.policy_revision
        return False

    # --- the scheduler's step ---------------------------------------------------------
    def tick(self, now: float | None = None) -> list:
        """What is due: a pending version past its validation window becomes enabled and
        primary; a key due for rotation rotates; a destroy_scheduled version past its
        grace is destroyed (its key objects deleted, the record keeping the metadata, an
        attestation audit record); approvals past their lifetime expire; a completed
        migration's source copies are erased when their 30 days are up, and one left
        in_progress by a stopped process is marked failed. One transaction
        per key. A key due for rotation has its pair generated before its transaction.
        Returns the (action, key id or approval id, version) done."""
        now = self.clock() if now is None else now
        done = []
        with self._reading():
            keys = [self._decoded(R.KeyRecord, o) for o in self._objects(C.CKO_FERRO_GOVERNED_KEY)]
            approvals = [self._decoded(R.Approval, o) for o in self._objects(C.CKO_FERRO_APPROVAL)]
            migrations = [self._decoded(R.Migration, o) for o in self._objects(C.CKO_FERRO_MIGRATION)]
        for rec in keys:
            if _due(rec, now):
                rotating = rec.next_rotation_at is not None and rec.next_rotation_at <= now
                pair = self._prepare(rec.algorithm, rec.name, rec.exportable) if rotating else None
                devices = []
                ticked = self._kept(pair, lambda key_id=rec.id, pair=pair: self._write(
                    lambda: self._tick_key(key_id, now, pair, devices)))
                done.extend(ticked)
                self._destroy_devices(devices if ticked else [], f"key {rec.id}")
        for approval in approvals:
            if approval.status in ("pending", "approved") and now >= approval.expires_at:
                done.extend(self._write(lambda approval_id=approval.id: self._expire(approval_id, now)))
            elif self.approval_retention_days is not None and approval.status in DONE and \
                    now >= approval.created_at + self.approval_retention_days * DAY:
                done.extend(self._write(lambda approval_id=approval.id: self._prune(approval_id, now)))
        for migration in migrations:
            if M.due(migration, now):
                done.extend(M.erase_source(self, migration.id, now))
            elif M.stale(migration, now):
                done.extend(M.end_stale(self, migration.id, now))
        return done

    def _prune(self, approval_id: str, now: float) -> list:
        """A completed approval past its retention leaves the store (its audit records stay)."""
        obj, found = self._find(R.Approval, approval_id)
        if found is None or found.status not in DONE:
            return []
        self.token.remove_object(obj)
        self._event(SCHEDULER, "approval.pruned", key_id=found.key_id, approval_id=found.id, message=found.status)
        return [("approval.pruned", found.id, None)]

    def _tick_key(self, key_id: str, now: float, pair=None, devices=None) -> list:
        obj, rec = self._key_for_write(key_id)
        done = []
        devices = [] if devices is None else devices
        devices.clear()              # a retried transaction starts over
        for v in rec.versions:
            if v.state == R.PENDING and v.enabled_at is not None and v.enabled_at <= now:
                v.state, v.enabled_at = R.ENABLED, now
                if v.number > rec.primary:
                    rec.primary = v.number
                done.append(("key.enable_pending", rec.id, v.number))
                self._event(SCHEDULER, "key.enable_pending", rec, v.number, message="validation window passed")
            elif v.state == R.DESTROY_SCHEDULED and v.destroy_at is not None and v.destroy_at <= now:
                self._remove_objects(v.objects, devices)
                v.state, v.destroyed_at, v.destroy_at = R.DESTROYED, now, None
                done.append(("key.destroyed", rec.id, v.number))
                self._event(SCHEDULER, "key.destroyed", rec, v.number,
                            message=f"attestation: key material erased, objects {','.join(v.objects)} deleted")
        if rec.next_rotation_at is not None and rec.next_rotation_at <= now:
            self._rotate(SCHEDULER, obj, rec, False, "key.auto_rotate", pair)
            done.append(("key.auto_rotate", rec.id, rec.primary))
        elif done:
            self._commit_key(obj, rec)
        return done

    def _remove_objects(self, uids, devices: list) -> None:
        """Delete the key objects `uids` (in the caller's transaction); a device-held one's
        (backend, ref) is added to `devices`, for _destroy_devices once the transaction
        committed: a device key is never destroyed under a live object."""
        for uid in uids:
            kobj = self.token.by_uid.get(uid)
            if kobj is None or not self.token.loaded(kobj):
                continue
            if engine.is_held(kobj):
                kobj = self.token.open(kobj)
                devices.append((kobj.attrs[C.CKA_FERRO_BACKEND].decode(), engine.key_ref(kobj)))
            self.token.remove_object(kobj)

    def _destroy_devices(self, devices: list, what: str) -> None:
        """Destroy the device keys _remove_objects collected; a failure is logged (the key
        is unreachable from the token already)."""
        for name, ref in devices:
            try:
                if self.backends is None:
                    raise PKCS11Error(C.CKR_GENERAL_ERROR, "no backends configured")
                self.backends.get(name).destroy(ref)
            except PKCS11Error as err:
                LOG.error("%s: its key on backend %s was not destroyed: %s", what, name, err.reason)

    def _expire(self, approval_id: str, now: float) -> list:
        obj, found = self._find(R.Approval, approval_id)
        if found is None or found.status not in ("pending", "approved") or now < found.expires_at:
            return []
        approval = self._mutable(found)
        approval.status = "expired"
        self._save(approval, obj)
        self._event(SCHEDULER, "approval.expired", key_id=approval.key_id, approval_id=approval.id)
        return [("approval.expired", approval.id, None)]

    # --- the object a crypto operation uses -------------------------------------------
    def version_object(self, key: str, number: int | None, use: str):
        """The key object to run `use` with: the primary for producing uses (encrypt,
        sign, wrap, mac), the named version (default the primary) for consuming ones; of
        a pair, the half that does `use`. Refused (failed_precondition) when record.permits
        says no; the caller still passes the gate."""
        with self.token.lock:
            self.token.refresh()
            return self.use_object(self.read_key(key), number, use)

    def use_object(self, rec, number: int | None, use: str):
        """version_object's answer for the record `rec` (a `read_key` view), under the
        caller's lock and head check."""
        if use not in R.PRODUCING and use not in R.CONSUMING:
            _fail("invalid_argument", f"unknown use {use!r}")
        if use not in R.uses_of(rec):
            _fail("failed_precondition", f"{rec.name} is not for {use}")
        number = rec.primary if number is None else number
        if use in R.PRODUCING and number != rec.primary:
            _fail("failed_precondition", f"{use} uses the primary version (v{rec.primary})")
        reason = R.permits(rec, number, use)
        if reason is not None:
            _fail("failed_precondition", reason)
        uids = rec.version(number).objects
        if len(uids) == 2:
            uid = uids[1] if use in ("encrypt", "verify", "wrap") else uids[0]
        else:
            uid = uids[0]
        obj = self.token.by_uid.get(uid)
        if obj is None or not self.token.loaded(obj):
            _fail("failed_precondition", f"the key object of {rec.name} v{number} is missing")
        return obj

    # --- keys leaving and entering through the REST service's wrap / unwrap -----------
    def export_object(self, actor: Principal, key: str, version: int | None, wrapping_key: str,
                      approval_id=None) -> tuple:
        """(the key object of version `version`, default the primary, of `key` that a wrap
        with the governed key `wrapping_key` (its id) takes out, whether an approval was
        consumed for it). Whether the key may leave is the gate's rule (gate.wrap_out,
        gate.export); here only the approval a dual-controlled exportable key needs: made
        (approval_required) or consumed, for exactly this request."""
        def step():
            _, rec = self._find_key(key)
            number = rec.primary if version is None else version
            v = self._require_state(rec, number, (R.ENABLED,))
            dual = self._dual(self._tags_of(rec)) if rec.exportable else None    # (not exportable: the gate refuses)
            held = self._guard(actor, "export", {"key_id": rec.id, "version": number, "wrapping_key": wrapping_key},
                               dual, rec.policy_revision, rec.id, approval_id)
            return held if held is not None else (v.objects[0], dual is not None)
        uid, approved = _closed(self._write(step, actor, "export", key))
        with self.token.lock:
            obj = self.token.by_uid.get(uid)
            if obj is None or not self.token.loaded(obj):
                _fail("failed_precondition", "the key object of that version is missing")
        return obj, approved

    def import_key(self, actor: Principal, name: str, algorithm: str, usage, value: bytes, description: str = "",
                   owner: str = "") -> R.KeyRecord:
        """A new governed key whose version 1 is the secret `value` (a key the REST
        service unwrapped through the gate), its key object made as create_key makes one
        but marked as not made here (CKA_LOCAL false, never always-sensitive, not
        extractable). Secret-key algorithms only; no tags (an administrator attaches them)."""
        _check_name(name)
        spec = A.SPECS.get(algorithm)
        if spec is None:
            _fail("invalid_argument", f"algorithm must be one of {', '.join(A.SPECS)}")
        if spec.pair:
            _fail("invalid_argument", f"{algorithm} keys are not imported: only secret keys are")
        usage = _check_usage(usage, spec, algorithm)
        size = spec.secret[C.CKA_VALUE_LEN]
        if not isinstance(value, bytes) or len(value) != size:
            _fail("invalid_argument", f"the unwrapped key is not a {size}-byte {algorithm} key")
        if not isinstance(description, str) or not isinstance(owner, str):
            _fail("invalid_argument", "description and owner are strings")

        def step():
            if self._find_by_name(name) is not None:
                _fail("conflict", f"a governed key named {name!r} exists")
            now = self.clock()
            rec = R.KeyRecord(id=str(uuid.uuid4()), name=name, algorithm=algorithm, usage=usage, created_at=now,
                              owner=owner, description=description)
            common, engine_set = _version_attrs(rec, 1, R.ENABLED)
            given = {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: spec.key_type, **common,
                     C.CKA_SENSITIVE: True, C.CKA_EXTRACTABLE: False, **A.usage_flags(usage, 0)}
            attrs = keygen.key_attrs(C.CKO_SECRET_KEY, given, {C.CKA_VALUE: value}, C.CKM_AES_KEY_WRAP_KWP,
                                     "unwrap", self.separated)
            obj = keygen.add_object(self.token, {**attrs, **engine_set})
            self._fresh.add(obj.uid)
            rec.versions.append(R.Version(number=1, state=R.ENABLED, created_at=now, enabled_at=now,
                                          objects=[obj.uid]))
            self._commit_key(None, rec)
            self._event(actor, "key.import", rec, 1, message=f"{algorithm} {','.join(usage)} unwrapped")
            return rec
        return self._write(step, actor, "import", name)


class _Closed:
    """A step that closed an approval (expired / invalidated) and must commit that,
    then refuse the request."""

    def __init__(self, approval: R.Approval):
        self.approval = approval


def _closed(result):
    if isinstance(result, _Closed):
        raise GovernanceError("failed_precondition", f"approval {result.approval.id} is {result.approval.status}")
    return result


def _due(rec: R.KeyRecord, now: float) -> bool:
    return (rec.next_rotation_at is not None and rec.next_rotation_at <= now) or any(
        (v.state == R.PENDING and v.enabled_at is not None and v.enabled_at <= now)
        or (v.state == R.DESTROY_SCHEDULED and v.destroy_at is not None and v.destroy_at <= now)
        for v in rec.versions)


def _pair_templates(spec: A.Spec, common: dict, exportable: bool) -> tuple:
    """(public, private) templates of a version's pair (usage flags added by the caller)."""
    pub = {C.CKA_CLASS: C.CKO_PUBLIC_KEY, C.CKA_KEY_TYPE: spec.key_type, C.CKA_TOKEN: True, **common,
           **spec.public}
    priv = {C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: spec.key_type, C.CKA_TOKEN: True, **common,
            C.CKA_SENSITIVE: True, C.CKA_EXTRACTABLE: bool(exportable)}
    return pub, priv


def _version_attrs(rec: R.KeyRecord, number: int, state: str) -> tuple:
    """(the template every key object of version `number` is made with, the attributes
    the engine sets on them: key id, version and the record's mirrored state)."""
    mirrored = _mirrored(rec, None, number, state)
    common = {C.CKA_TOKEN: True, C.CKA_PRIVATE: True, C.CKA_MODIFIABLE: False, C.CKA_DESTROYABLE: False,
              C.CKA_COPYABLE: False, C.CKA_LABEL: mirrored.pop(C.CKA_LABEL),
              C.CKA_ID: f"{rec.id}/v{number}".encode()}
    return common, {C.CKA_FERRO_KEY_ID: rec.id.encode(), C.CKA_FERRO_VERSION: number, **mirrored}


def _mirrored(rec: R.KeyRecord, v: R.Version | None, number: int | None = None, state: str | None = None) -> dict:
    """The attributes a version's key objects carry as a readable copy of the record."""
    number = v.number if v is not None else number
    state = v.state if v is not None else state
    primary = number == rec.primary and state == R.ENABLED
    return {C.CKA_LABEL: (rec.name if primary else f"{rec.name}@v{number}").encode(),
            C.CKA_FERRO_STATE: R.STATE_CODE[state], C.CKA_FERRO_PRIMARY: primary}


def _check_name(name) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or "@" in name or "/" in name \
            or not name.isprintable() or name != name.strip():
        _fail("invalid_argument", f"a key name is 1..{MAX_NAME} printable characters, no '@' or '/', "
              "no surrounding spaces")
    try:
        uuid.UUID(name)
    except ValueError:
        return
    _fail("invalid_argument", "a key name may not be a UUID (ids are)")


def _check_usage(usage, spec: A.Spec, algorithm: str) -> list:
    if isinstance(usage, str) or not usage or any(u not in R.USAGES for u in usage):
        _fail("invalid_argument", f"usage is a non-empty list of {', '.join(R.USAGES)}")
    wrong = set(usage) - spec.usages
    if wrong:
        _fail("invalid_argument", f"{algorithm} keys cannot {', '.join(sorted(wrong))}")
    return sorted(set(usage))


def _check_tag_names(tags) -> tuple:
    if isinstance(tags, str) or any(not isinstance(t, str) or not t for t in tags):
        _fail("invalid_argument", "tags is a list of tag names")
    return tuple(dict.fromkeys(tags))


def _check_period(days) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365):
        _fail("invalid_argument", "a rotation period is 1..365 days")


def _check_tag(tag) -> None:
    if not isinstance(tag, R.PolicyTag):
        _fail("invalid_argument", "a PolicyTag is required")
    if not isinstance(tag.name, str) or not 1 <= len(tag.name) <= MAX_NAME or not tag.name.isprintable():
        _fail("invalid_argument", "a tag name is 1..128 printable characters")
    ints = dict(quorum=(tag.quorum, 2, 16), approval_ttl_seconds=(tag.approval_ttl_seconds, 60, 30 * DAY),
                retention_days=(tag.retention_days, 0, 3650),
                destroy_grace_seconds=(tag.destroy_grace_seconds, 0, 365 * DAY))
    for name, (value, low, high) in ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            _fail("invalid_argument", f"{name} must be {low}..{high}")
    if not isinstance(tag.dual_control, bool) or not isinstance(tag.auto_rotate, bool):
        _fail("invalid_argument", "dual_control and auto_rotate are true or false")
    _check_period(tag.rotation_period_days)
    if tag.security_level not in ("software", "hardware"):
        _fail("invalid_argument", "security_level is software or hardware")


POLICY_FIELDS = ("dual_control", "quorum", "approval_ttl_seconds", "retention_days", "destroy_grace_seconds",
                 "rotation_period_days", "auto_rotate", "security_level")


def tag_rotation_days(tag: R.PolicyTag):
    """The rotation period a tag asks of its keys: its rotation_period_days (1..365),
    or DEFAULT_ROTATION_DAYS (90) when it says auto_rotate without a period; None: the
    tag asks for no automatic rotation."""
    if tag.rotation_period_days is not None:
        return tag.rotation_period_days
    return DEFAULT_ROTATION_DAYS if tag.auto_rotate else None


def _same_policy(old: R.PolicyTag, new: R.PolicyTag) -> bool:
    return all(getattr(old, f) == getattr(new, f) for f in POLICY_FIELDS)


def _weaker(old: R.PolicyTag, new: R.PolicyTag) -> bool:
    """Does `new` lift or loosen a control `old` imposes?"""
    return (not new.dual_control or new.quorum < old.quorum or new.approval_ttl_seconds > old.approval_ttl_seconds
            or new.retention_days < old.retention_days or new.destroy_grace_seconds < old.destroy_grace_seconds
            or (old.security_level == "hardware" and new.security_level != "hardware"))


def _first(pair):
    return pair[0]


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _page_after(token) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str):
        _fail("invalid_argument", "a page token is a string")
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        _fail("invalid_argument", "not a page token of this list")
