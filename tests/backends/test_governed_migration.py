"""A governed key moved between real backends (Governance.migrate,
provider/governance/migration.py): from the engine's soft backend to SoftHSM2 and back.
The moved key keeps verifying old signatures and decrypting old ciphertexts through the
gate, its Migration record says completed with both hashes and the proof, the audit
chain has each status change, the source copy is kept (unusable) 30 days and then
erased by the scheduler, a dual-control key needs two approvers, and a failure leaves
nothing half-done."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from provider import constants as C
from provider import migrate
from provider.audit import verifier as V
from provider.errors import PKCS11Error
from provider.governance import GovernanceError, governance_of
from provider.governance import record as R
from provider.governance.migration import SOURCE_KEPT_DAYS
from provider.library import Library
from provider.mechanisms.params import Mechanism
from provider.principal import Principal

from .engine_env import PIN, RW, T, backend_settings, init_token, write_config

ROOT = Path(__file__).resolve().parents[2]
ALICE = Principal("alice", frozenset({"operator"}), interface="cli")
BOB = Principal("bob", frozenset({"operator"}), interface="rest")
CAROL = Principal("carol", frozenset({"administrator"}), interface="rest")
DAY = 86400
ECDSA = Mechanism(C.CKM_ECDSA_SHA256)
PKCS1 = Mechanism(C.CKM_RSA_PKCS)


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def hsm(tmp_path, softhsm):
    """One token "gov" (no token policy: its keys are the engine's), backends soft and
    shsm (SoftHSM2) configured; the governance API on it with the token's audit chain."""
    lib = Library(write_config(tmp_path, {"shsm": backend_settings("softhsm", {"softhsm": softhsm})},
                               (["soft"], "software"), "nobody"))
    slot = init_token(lib, "gov")
    session = lib.open_session(slot, RW)
    lib.login(session, C.CKU_USER, PIN)
    clock = Clock()
    gov = governance_of(lib, lib.tokens[slot], clock=clock)
    gov.clock_ = clock
    yield lib, session, gov
    lib.finalize()


def _object(lib, session, label: str, cls: int) -> list:
    lib.find_objects_init(session, T(LABEL=label.encode(), CLASS=cls))
    try:
        return lib.find_objects(session, 10)
    finally:
        lib.find_objects_final(session)


def _records(gov) -> list:
    return [json.loads(body) for _, body in V.rows_of(gov.token.store)]


def _sign(lib, session, label: str, mech, data: bytes) -> bytes:
    (key,) = _object(lib, session, label, C.CKO_PRIVATE_KEY)
    lib.sign_init(session, mech, key)
    return lib.sign(session, data, 1024)


def _public(gov, rec, number):
    obj = gov.token.by_uid[rec.version(number).objects[1]]
    return serialization.load_der_public_key(bytes(obj.attrs[C.CKA_PUBLIC_KEY_INFO]))


def test_a_governed_ec_key_moves_to_softhsm_and_keeps_verifying(hsm):
    lib, session, gov = hsm
    gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
    old_sig = _sign(lib, session, "sig", ECDSA, b"signed before")
    rec = gov.rotate(ALICE, "sig")
    v2_sig = _sign(lib, session, "sig", ECDSA, b"signed by v2")
    before = gov.get_key("sig")

    migration = gov.migrate(ALICE, "sig", "shsm")
    assert migration.status == R.COMPLETED and migration.destination_backend == "shsm"
    assert [m.number for m in migration.versions] == [1, 2] and migration.source_backends == ["soft"]
    for m in migration.versions:
        assert len(m.sha256_source) == 64 and m.sha256_source == m.sha256_destination
        assert m.proof == "CKM_ECDSA" and m.destination_objects[0] != m.source_objects[0]
        assert m.destination_objects[1] == m.source_objects[1]           # the public key object stays
    assert migration.source_erase_at == gov.clock_.now + SOURCE_KEPT_DAYS * DAY

    after = gov.get_key("sig")
    assert [v.backend for v in after.versions] == ["shsm", "shsm"] and after.primary == rec.primary == 2
    (priv,) = _object(lib, session, "sig", C.CKO_PRIVATE_KEY)            # one object: the primary, on SoftHSM2
    assert lib.get_attribute_value(session, priv, [C.CKA_FERRO_BACKEND])[0] == b"shsm"
    assert lib.get_attribute_value(session, priv, [C.CKA_LOCAL])[0] == b"\x00"      # imported
    # old signatures still verify with the key's public halves; new ones are made on SoftHSM2
    (pub,) = _object(lib, session, "sig", C.CKO_PUBLIC_KEY)
    lib.verify_init(session, ECDSA, pub)
    lib.verify(session, b"signed by v2", v2_sig)
    _public(gov, after, 1).verify(_der(old_sig), b"signed before", ec.ECDSA(hashes.SHA256()))
    new_sig = _sign(lib, session, "sig", ECDSA, b"signed on softhsm")
    _public(gov, after, 2).verify(_der(new_sig), b"signed on softhsm", ec.ECDSA(hashes.SHA256()))

    # the source copies are kept, found by no search for the key, refused by the gate
    kept = [gov.token.by_uid[m.source_objects[0]] for m in migration.versions]
    assert all(gov.token.loaded(o) for o in kept)
    assert all(o.attrs[C.CKA_LABEL].endswith(b"~migrated") and not o.attrs[C.CKA_SIGN] for o in kept)
    assert _object(lib, session, "sig@v1", C.CKO_PRIVATE_KEY) != []       # v1's new object only
    (v1,) = _object(lib, session, "sig@v1", C.CKO_PRIVATE_KEY)
    assert lib.get_attribute_value(session, v1, [C.CKA_FERRO_BACKEND])[0] == b"shsm"

    # the audit chain: in_progress then completed, with the migration's id
    moves = [r for r in _records(gov) if r["action"].startswith("migration.")]
    assert [(r["action"], r["outcome"]) for r in moves] == [("migration.in_progress", "ok"),
                                                            ("migration.completed", "ok")]
    assert all(f"subject={migration.id}" in r["message"] and r["key_id"] == before.id for r in moves)
    assert gov.list_migrations("sig")[0].status == R.COMPLETED

    # 30 days on, the scheduler erases the source copies
    gov.clock_.now += SOURCE_KEPT_DAYS * DAY - 1
    assert gov.tick() == []
    gov.clock_.now += 1
    assert gov.tick() == [("migration.source_erased", migration.id, None)]
    assert all(gov.token.by_uid.get(o.uid) is None for o in kept)
    assert gov.get_migration(migration.id).source_erased_at == gov.clock_.now
    assert [r["action"] for r in _records(gov)][-1] == "migration.source_erased"
    assert gov.tick() == []
    new_sig = _sign(lib, session, "sig", ECDSA, b"still signing")           # the moved key still works
    _public(gov, after, 2).verify(_der(new_sig), b"still signing", ec.ECDSA(hashes.SHA256()))


def test_an_rsa_key_moved_to_softhsm_and_back_decrypts_old_ciphertexts(hsm):
    lib, session, gov = hsm
    rec = gov.create_key(ALICE, "enc", "rsa-2048", ["encrypt", "decrypt"])
    ciphertext = _public(gov, rec, 1).encrypt(b"old secret", padding.PKCS1v15())
    assert gov.migrate(ALICE, "enc", "shsm").status == R.COMPLETED
    assert _decrypt(lib, session, "enc", ciphertext) == b"old secret"
    back = gov.migrate(ALICE, "enc", "soft")
    assert back.status == R.COMPLETED and back.versions[0].source_backend == "shsm"
    assert back.versions[0].proof == "CKM_RSA_PKCS"
    assert gov.get_key("enc").versions[0].backend == "soft"
    assert _decrypt(lib, session, "enc", ciphertext) == b"old secret"
    refused = _refused(gov.migrate, ALICE, "enc", "soft")
    assert refused.code == "failed_precondition" and "on soft" in refused.message


def test_a_dual_control_key_moves_only_with_two_approvers(hsm):
    lib, session, gov = hsm
    gov.put_tag(CAROL, R.PolicyTag("two-person", dual_control=True))
    gov.create_key(ALICE, "guarded", "ec-p384", ["sign", "verify"], tags=["two-person"])
    gov.create_key(ALICE, "other", "ec-p256", ["sign", "verify"], tags=["two-person"])
    err = _refused(gov.migrate, ALICE, "guarded", "shsm")
    assert err.code == "approval_required" and err.approval.action == "migrate"
    approval = err.approval
    assert gov.list_migrations("guarded") == [] and gov.get_key("guarded").versions[0].backend == "soft"
    assert _refused(gov.migrate, ALICE, "guarded", "shsm", approval.id).code == "approval_required"
    assert _refused(gov.approve, ALICE, approval.id).code == "permission_denied"     # not the requester
    gov.approve(BOB, approval.id)
    assert _refused(gov.migrate, ALICE, "guarded", "shsm", approval.id).code == "approval_required"
    gov.approve(CAROL, approval.id)
    assert _refused(gov.migrate, ALICE, "other", "shsm", approval.id).code == "permission_denied"  # another request
    migration = gov.migrate(ALICE, "guarded", "shsm", approval.id)
    assert migration.status == R.COMPLETED and migration.approval_id == approval.id
    assert gov.get_approval(approval.id).status == "executed"
    assert gov.get_key("guarded").versions[0].backend == "shsm"
    assert _refused(gov.migrate, ALICE, "guarded", "soft", approval.id).code == "permission_denied"
    assert _refused(gov.migrate, BOB, "guarded", "soft").code == "approval_required"   # back: asked again
    actions = [r["action"] for r in _records(gov)]
    assert actions.count("approval.approved") == 2 and "approval.executed" in actions


def test_a_failed_move_leaves_nothing_half_done(hsm, monkeypatch):
    lib, session, gov = hsm
    rec = gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
    gov.rotate(ALICE, "sig")
    made = []
    real = migrate.move

    def second_fails(src, ref, dest, *args):
        if made:          # the blob of the second version changed in transit: the hash check refuses
            monkeypatch.setattr(migrate, "transfer", lambda blob: bytes([blob[0] ^ 1]) + bytes(blob[1:]))
        result = real(src, ref, dest, *args)
        made.append(result[0])
        return result
    monkeypatch.setattr(migrate, "move", second_fails)
    err = _refused(gov.migrate, ALICE, "sig", "shsm")
    assert err.code == "failed_precondition" and "rolled_back" in err.message and "integrity" in err.message
    assert len(made) == 1
    (migration,) = gov.list_migrations("sig")
    assert migration.status == R.ROLLED_BACK and "integrity hash mismatch" in migration.reason
    after = gov.get_key("sig")
    assert [v.backend for v in after.versions] == ["soft", "soft"]
    assert [v.objects for v in after.versions] == [v.objects for v in gov.get_key(rec.id).versions]
    dest = gov.backends.get("shsm")
    with pytest.raises(PKCS11Error):                   # the destination key made first was destroyed
        dest.sign(made[0], Mechanism(C.CKM_ECDSA), b"\x00" * 32)
    _sign(lib, session, "sig", ECDSA, b"the source still signs")
    moves = [(r["action"], r["outcome"]) for r in _records(gov) if r["action"].startswith("migration.")]
    assert moves == [("migration.in_progress", "ok"), ("migration.rolled_back", "failed")]
    monkeypatch.setattr(migrate, "move", real)
    monkeypatch.undo()
    assert gov.migrate(ALICE, "sig", "shsm").status == R.COMPLETED    # a failed one blocks no retry


def test_what_cannot_move_is_refused(hsm):
    lib, session, gov = hsm
    gov.create_key(ALICE, "aes", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.create_key(ALICE, "ed", "ed25519", ["sign", "verify"])
    gov.create_key(ALICE, "ec", "ec-p256", ["sign", "verify"])
    for key in ("aes", "ed"):
        err = _refused(gov.migrate, ALICE, key, "shsm")
        assert err.code == "failed_precondition" and "stay in the engine" in err.message
    assert _refused(gov.migrate, ALICE, "ec", "nowhere").code == "invalid_argument"
    assert _refused(gov.migrate, ALICE, "ec", None).code == "invalid_argument"
    assert _refused(gov.migrate, ALICE, "missing", "shsm").code == "not_found"
    assert gov.list_migrations() == []


def _refused(fn, *args):
    with pytest.raises(GovernanceError) as e:
        fn(*args)
    return e.value


def _decrypt(lib, session, label, ciphertext) -> bytes:
    (key,) = _object(lib, session, label, C.CKO_PRIVATE_KEY)
    lib.decrypt_init(session, PKCS1, key)
    return lib.decrypt(session, ciphertext, 512)


def _der(raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def test_ferrohsm_key_migrate_goes_through_governance(hsm, tmp_path):
    """The CLI in another process: the first call makes the approval (exit 2), two
    others approve it here, the second call with --approval moves the key."""
    lib, session, gov = hsm
    gov.clock_.now = time.time()                     # the CLI's clock is the real one
    gov.put_tag(CAROL, R.PolicyTag("two-person", dual_control=True))
    rec = gov.create_key(ALICE, "cli-key", "ec-p256", ["sign", "verify"], tags=["two-person"])
    signed = _sign(lib, session, "cli-key", ECDSA, b"before the move")
    cli = [sys.executable, "-c", "from provider.cli import app; app()", "key", "migrate", "cli-key",
           "--to", "shsm", "--token", "gov", "--actor", "ops-alice", "--pin", PIN.decode()]
    env = {**os.environ, "FERROHSM_CONF": str(tmp_path / "ferrohsm.conf"), "COLUMNS": "200"}
    first = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 2, first.stdout + first.stderr
    assert "approval_required" in first.stdout
    (approval,) = gov.list_approvals("pending")
    assert approval.requester == "ops-alice" and approval.id in first.stdout
    gov.approve(BOB, approval.id)
    gov.approve(CAROL, approval.id)
    second = subprocess.run(cli + ["--approval", approval.id], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "completed" in second.stdout and "proof CKM_ECDSA" in second.stdout
    (migration,) = gov.list_migrations("cli-key")
    assert migration.status == R.COMPLETED and migration.requester == "ops-alice"
    assert gov.get_key("cli-key").versions[0].backend == "shsm"
    _public(gov, rec, 1).verify(_der(signed), b"before the move", ec.ECDSA(hashes.SHA256()))
    assert any(r["action"] == "migration.completed" and r["interface"] == "cli" and r["actor"] == "ops-alice"
               for r in _records(gov))


def test_migrate_key_refuses_a_governed_key(hsm):
    """`ferrohsm migrate-key` would copy a governed key to another token as a plain key:
    refused, even when the key is exportable."""
    lib, session, gov = hsm
    slot = init_token(lib, "elsewhere")
    rec = gov.create_key(ALICE, "gk", "ec-p256", ["sign", "verify"])
    gov.set_flags(CAROL, "gk", exportable=True)
    gov.rotate(ALICE, "gk")                               # v2 is made CKA_EXTRACTABLE
    lib.logout(session)                                   # migrate-key logs in to both tokens itself
    record = migrate.migrate_key(lib, "gov", PIN, "elsewhere", PIN, f"{rec.id}/v2".encode(), "alice")
    assert record["outcome"] == "refused" and "governed key" in record["reason"], record["reason"]
    other = lib.open_session(slot, RW)
    lib.login(other, C.CKU_USER, PIN)
    lib.find_objects_init(other, T(CLASS=C.CKO_PRIVATE_KEY))
    assert lib.find_objects(other, 10) == []              # nothing reached the other token


def test_a_destroyed_version_is_destroyed_on_its_device_too(hsm):
    """The scheduler's destroy of a device-held version (here moved to SoftHSM2) erases the
    device key, not only the token's object: the device refuses it afterwards."""
    from provider.backends import engine
    lib, session, gov = hsm
    gov.create_key(ALICE, "gone", "ec-p256", ["sign", "verify"])
    gov.rotate(ALICE, "gone")
    gov.migrate(ALICE, "gone", "shsm")
    rec = gov.get_key("gone")
    held = gov.token.open(gov.token.by_uid[rec.version(1).objects[0]])
    assert engine.is_held(held) and held.attrs[C.CKA_FERRO_BACKEND] == b"shsm"

    def device_sign():
        return gov.backends.use(gov.token, held, lambda b, r: b.sign(r, Mechanism(C.CKM_ECDSA), b"\1" * 32))
    assert len(device_sign()) == 64                       # the key is there, on SoftHSM2
    gov.schedule_destroy(ALICE, "gone", 1)
    gov.clock_.now += 2 * DAY
    assert ("key.destroyed", rec.id, 1) in gov.tick()
    with pytest.raises(PKCS11Error):
        device_sign()
    assert gov.get_key("gone").version(2).state == R.ENABLED     # the other version untouched


def test_a_migration_its_process_left_in_progress_is_marked_failed(hsm):
    """A process that stops between the start and the end of a migration leaves it
    in_progress; an hour on, the scheduler marks it failed (audited), the key unchanged."""
    from provider.governance import migration as M
    lib, session, gov = hsm
    gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
    before = gov.get_key("sig")
    started = M._start(gov, ALICE, "sig", gov.backends.get("shsm"), None)    # then the process "stops"
    assert started.status == R.IN_PROGRESS
    gov.clock_.now += M.STALE_SECONDS - 1
    assert gov.tick() == []
    gov.clock_.now += 1
    assert gov.tick() == [("migration.failed", started.id, None)]
    found = gov.get_migration(started.id)
    assert found.status == R.FAILED and "interrupted" in found.reason
    assert [r["action"] for r in _records(gov)][-1] == "migration.failed"
    assert gov.get_key("sig").versions == before.versions and gov.tick() == []
    assert gov.migrate(ALICE, "sig", "shsm").status == R.COMPLETED
