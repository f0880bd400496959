"""A governed key moved to another backend (`Governance.migrate`), as a governed
operation: dual-controlled where the key's tags ask for it, each status change one
store transaction with its audit record (a Migration record, record.py).

  1. start (one transaction): the key's algorithm is one device backends hold (EC
     P-256/P-384, RSA-2048), its versions with material (every state but destroyed)
     not yet on the destination are listed, the placement rule of its tags and the
     environment admits the destination, no other migration of the key is running;
     under dual control this makes the pending approval instead (action "migrate"),
     and runs once it is approved. The record is written `in_progress`.
  2. the device work, outside any transaction (the token's lock let go for device
     calls): each version's private key is wrapped under a fresh transport key by its
     source backend, its SHA-256 compared at the destination, unwrapped there and
     proved by a test signature the source's public key verifies (provider/migrate.py:
     `move`, the same steps `ferrohsm migrate-key` runs).
  3. complete (one transaction): each version gets a new private key object for the
     destination key (the source object's attributes and policy, its key material or
     device reference replaced; CKA_LOCAL false as for any imported key), the public key
     object stays (it is the engine's either way); the version names the new objects and
     backend. The source object is KEPT for SOURCE_KEPT_DAYS (30) but retired: its
     usage attributes false, its label and CKA_ID moved aside, so no search for the key
     finds it and no use passes the gate. The record becomes `completed`.
  4. on any failure: destination keys already made are destroyed, nothing of the key
     changes, and the record becomes `rolled_back` (something made was undone) or
     `failed` (nothing was made), with the reason.
  5. the scheduler's tick erases the retired source copies when source_erase_at is due
     (their objects deleted, a device key destroyed after the commit) and audits it, and
     marks `failed` a migration left in_progress past STALE_SECONDS (its process stopped).

The engine moves its own key between the backends of one token: CKA_EXTRACTABLE (what a
PKCS#11 client may wrap out) does not apply, the approval and the audit do."""

import uuid

from .. import constants as C
from .. import keygen, migrate
from ..backends import engine
from ..errors import PKCS11Error
from ..log import LOG
from ..mechanisms import registry
from ..principal import SCHEDULER
from . import record as R
from .errors import GovernanceError

DAY = 86400
SOURCE_KEPT_DAYS = 30                 # the backend design: the source key is kept at least 30 days
STALE_SECONDS = 3600                  # an in_progress migration older than this no longer blocks another
MOVABLE = frozenset({"rsa-2048", "ec-p256", "ec-p384"})      # what device backends hold
# the device reference / key material a moved private key object does not take from its source
NOT_TAKEN = frozenset({C.CKA_UNIQUE_ID, C.CKA_FERRO_BACKEND, C.CKA_FERRO_KEY_REF})
IMPORTED = {C.CKA_LOCAL: False, C.CKA_KEY_GEN_MECHANISM: C.CK_UNAVAILABLE_INFORMATION,
            C.CKA_ALWAYS_SENSITIVE: False, C.CKA_NEVER_EXTRACTABLE: False}
RETIRED_USAGE = {cka: False for cka in (C.CKA_DECRYPT, C.CKA_SIGN, C.CKA_UNWRAP, C.CKA_SIGN_RECOVER,
                                        C.CKA_DERIVE)}


def _action(status: str) -> str:
    """The audit action of a status change: migration.in_progress, .completed, .failed,
    .rolled_back (the last two with outcome "failed")."""
    return f"migration.{status}"


def _fail(code: str, message: str):
    raise GovernanceError(code, message)


def run(gov, actor, key: str, destination: str, approval_id=None) -> R.Migration:
    dest = _destination(gov, destination)
    migration = _start(gov, actor, key, dest, approval_id)
    made = []                      # (MovedVersion, new KeyRef, hashes)
    try:
        with gov.token.lock:
            gov.token.refresh()
            gov._ready()
            for moved in migration.versions:
                made.append(_move(gov, moved, dest))
        return gov._write(lambda: _complete(gov, actor, migration.id, dest, made), actor, "migrate", key)
    except Exception as err:      # noqa: BLE001 - whatever stopped it, nothing half-done stays
        reason = (err.message if isinstance(err, GovernanceError) else
                  err.reason or C.name_of("CKR_", err.rv) if isinstance(err, PKCS11Error) else
                  f"unexpected {type(err).__name__}")
        if not isinstance(err, (GovernanceError, PKCS11Error)):
            LOG.exception("migration %s of %s failed", migration.id, migration.key_id)
        undone = _undo(dest, made)
        status = R.ROLLED_BACK if undone else R.FAILED
        gov._write(lambda: _end(gov, actor, migration.id, status, reason), actor, "migrate", key)
        raise GovernanceError("failed_precondition", f"migration {migration.id} {status}: {reason}") from None


def _destination(gov, name):
    if not isinstance(name, str) or not name:
        _fail("invalid_argument", "a destination backend name is required")
    if gov.backends is None:
        _fail("failed_precondition", "no backends are configured for this token")
    if name not in gov.backends.config.backends:
        _fail("invalid_argument", f"backend {name!r} is not configured")
    try:
        return gov.backends.get(name)
    except PKCS11Error as err:
        _fail("failed_precondition", err.reason or f"backend {name!r} cannot be used")


def _start(gov, actor, key: str, dest, approval_id) -> R.Migration:
    def step():
        obj, rec = gov._key_for_write(key)
        if rec.algorithm not in MOVABLE:
            _fail("failed_precondition", f"{rec.algorithm} keys stay in the engine: device backends hold "
                  f"{', '.join(sorted(MOVABLE))} keys")
        moving = [v for v in rec.versions if v.state != R.DESTROYED and v.backend != dest.name]
        if not moving:
            _fail("failed_precondition", f"every version of {rec.name} with key material is on {dest.name}")
        now = gov.clock()
        for other in _migrations(gov, rec.id):
            if other.status == R.IN_PROGRESS and now - other.created_at < STALE_SECONDS:
                _fail("conflict", f"migration {other.id} of {rec.name} is in progress")
        gov._check_placement(rec, dest.name)
        held = gov._guard(actor, "migrate", {"key_id": rec.id, "destination_backend": dest.name},
                          gov._dual(gov._tags_of(rec)), rec.policy_revision, rec.id, approval_id)
        if held is not None:
            return held
        migration = R.Migration(id=str(uuid.uuid4()), key_id=rec.id, destination_backend=dest.name,
                                requester=actor.subject, created_at=now, approval_id=approval_id,
                                versions=[R.MovedVersion(number=v.number, source_backend=v.backend,
                                                         source_objects=list(v.objects)) for v in moving])
        gov._save(migration)
        gov._event(actor, _action(R.IN_PROGRESS), rec, subject=migration.id,
                   message=f"{','.join(migration.source_backends)} -> {dest.name}: versions "
                           f"{','.join(str(v.number) for v in moving)}")
        return migration
    from .service import _closed
    return _closed(gov._write(step, actor, "migrate", key))


def _migrations(gov, key_id: str) -> list:
    return [m for m in (gov._decoded(R.Migration, o) for o in gov._objects(C.CKO_FERRO_MIGRATION))
            if m.key_id == key_id]


def _move(gov, moved: R.MovedVersion, dest) -> tuple:
    """Step 2 for one version, under the token's lock (let go for the device calls)."""
    token = gov.token
    key = token.by_uid.get(moved.source_objects[0])
    if key is None or not token.loaded(key):
        raise GovernanceError("failed_precondition", f"the key object of version {moved.number} is missing")
    key = token.open(key)
    src, ref = migrate.material_of(gov.backends, key)
    gov.backends.enter(token, src)
    gov.backends.enter(token, dest)
    hashes = {}
    with token.let_go():
        new_ref, proof = migrate.move(src, ref, dest, key.key_type, key.attrs.get(C.CKA_LABEL, b"").decode(),
                                      hashes)
    return moved, new_ref, {**hashes, "proof": proof}


def _undo(dest, made) -> bool:
    """Destroy the destination keys made; True if there were any."""
    for _, new_ref, _ in made:
        if not dest.inline:
            try:
                dest.destroy(new_ref)
            except PKCS11Error as err:
                LOG.error("migration: a destination key on %s could not be destroyed: %s", dest.name, err)
    return bool(made)


def _moved_private(key, dest, new_ref) -> dict:
    """The attributes of the destination's private key object: the source's, its
    material or device reference replaced by the destination's."""
    given = {cka: v for cka, v in key.attrs.items() if cka not in NOT_TAKEN and cka not in key.secret_types()}
    if dest.inline:
        made = registry.key_type(key.key_type).from_pkcs8(new_ref.blob)
    else:
        _, made = engine.held_key_attrs(dest, new_ref, given)
    return {**given, **made, **IMPORTED}


def _retired(rec: R.KeyRecord, number: int, migration_id: str) -> dict:
    """What a kept source copy becomes: found by no search for the key, used by nothing."""
    return {**RETIRED_USAGE, C.CKA_LABEL: f"{rec.name}@v{number}~migrated".encode(),
            C.CKA_ID: f"{rec.id}/v{number}/migrated/{migration_id}".encode(),
            C.CKA_FERRO_STATE: R.STATE_CODE[R.DISABLED], C.CKA_FERRO_PRIMARY: False}


def _complete(gov, actor, migration_id: str, dest, made) -> R.Migration:
    token = gov.token
    obj, rec = gov._key_for_write(_key_id(gov, migration_id))
    mobj, found = gov._find(R.Migration, migration_id)
    migration = gov._mutable(found)
    if migration.status != R.IN_PROGRESS:
        _fail("conflict", f"migration {migration.id} is {migration.status}")
    now = gov.clock()
    for moved, new_ref, hashes in made:
        v = rec.version(moved.number)
        if v is None or v.state == R.DESTROYED or v.objects != moved.source_objects:
            _fail("conflict", f"version {moved.number} of {rec.name} changed while it was moved")
        source = token.open(token.by_uid[moved.source_objects[0]])
        new = keygen.add_object(token, _moved_private(source, dest, new_ref))
        gov._fresh.add(new.uid)
        token.update_object(source, {**source.attrs, **_retired(rec, v.number, migration.id)})
        v.objects = [new.uid, *v.objects[1:]]
        v.backend = dest.name
        entry = next(m for m in migration.versions if m.number == moved.number)
        entry.destination_objects = list(v.objects)
        entry.sha256_source, entry.sha256_destination = hashes["sha256_source"], hashes["sha256_destination"]
        entry.proof = hashes["proof"]
    gov._commit_key(obj, rec)
    migration.status, migration.finished_at = R.COMPLETED, now
    migration.source_erase_at = now + SOURCE_KEPT_DAYS * DAY
    gov._save(migration, mobj)
    gov._event(actor, _action(R.COMPLETED), rec, subject=migration.id,
               message=f"-> {dest.name}: versions {','.join(str(m.number) for m in migration.versions)}; "
                       f"source kept until {migration.source_erase_at:.0f}")
    return migration


def _key_id(gov, migration_id: str) -> str:
    _, found = gov._find(R.Migration, migration_id)
    if found is None:
        _fail("not_found", f"no migration {migration_id!r}")
    return found.key_id


def _end(gov, actor, migration_id: str, status: str, reason: str) -> R.Migration:
    mobj, found = gov._find(R.Migration, migration_id)
    migration = gov._mutable(found)
    migration.status, migration.finished_at, migration.reason = status, gov.clock(), reason[:500]
    gov._save(migration, mobj)
    gov._event(actor, _action(status), key_id=migration.key_id, outcome="failed", subject=migration.id,
               message=reason[:500])
    return migration


# --- the scheduler's part ---------------------------------------------------------------
def due(migration: R.Migration, now: float) -> bool:
    return (migration.status == R.COMPLETED and migration.source_erased_at is None
            and migration.source_erase_at is not None and migration.source_erase_at <= now)


def stale(migration: R.Migration, now: float) -> bool:
    return migration.status == R.IN_PROGRESS and now - migration.created_at >= STALE_SECONDS


def end_stale(gov, migration_id: str, now: float) -> list:
    """An in_progress migration past STALE_SECONDS was interrupted (the process running it
    stopped): it becomes `failed`, audited. Nothing of the key changed (that happens only
    in the completing transaction); a destination device key the stopped process made
    may remain on that device, referenced by nothing. A migration still running after all
    finds itself failed at its completion and undoes its work (conflict)."""
    def step():
        _, found = gov._find(R.Migration, migration_id)
        if found is None or not stale(found, now):
            return []
        _end(gov, SCHEDULER, migration_id, R.FAILED,
             f"interrupted: still in progress {STALE_SECONDS} s after it started")
        return [(_action(R.FAILED), migration_id, None)]
    return gov._write(step)


def erase_source(gov, migration_id: str, now: float) -> list:
    """The kept source copies of a completed migration whose time is up leave the token
    (one transaction with its audit record); their device keys are destroyed after it
    commits (a failure there is logged: the key is unreachable from the token already)."""
    devices = []

    def step():
        devices.clear()              # a retried transaction starts over
        mobj, found = gov._find(R.Migration, migration_id)
        if found is None or not due(found, now):
            return []
        migration = gov._mutable(found)
        gov._remove_objects([moved.source_objects[0] for moved in migration.versions], devices)
        migration.source_erased_at = now
        gov._save(migration, mobj)
        gov._event(SCHEDULER, "migration.source_erased", key_id=migration.key_id, subject=migration.id,
                   message=f"attestation: source copies {','.join(m.source_objects[0] for m in migration.versions)} "
                           "deleted")
        return [("migration.source_erased", migration.id, None)]
    done = gov._write(step)
    gov._destroy_devices(devices if done else [], f"migration {migration_id}")
    return done
