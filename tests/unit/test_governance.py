"""Governed keys in the engine (provider/governance/service.py): every transition and
every refusal, on a real token store (memory and sqlite), the version key objects
checked as a PKCS#11 client sees them, the audit events each transition writes."""

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provider import constants as C
from provider.governance import GovernanceError
from provider.governance import record as R
from provider.principal import SCHEDULER

from .govkit import ALICE, AUDITOR, BOB, CAROL

DAY = 86400


def code_of(excinfo) -> str:
    return excinfo.value.code


def refused(code, fn, *args, **kwargs):
    with pytest.raises(GovernanceError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, e.value
    return e.value


def objects_of(gov, rec, number):
    return [gov.token.by_uid[uid] for uid in rec.version(number).objects]


def actions(gov):
    return [e["action"] for e in gov.events]


# --- create ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, usage, classes", [
    ("aes-256-gcm", ["encrypt", "decrypt"], [C.CKO_SECRET_KEY]),
    ("hmac-sha256", ["mac"], [C.CKO_SECRET_KEY]),
    ("ec-p256", ["sign", "verify"], [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY]),
    ("ec-p384", ["sign", "verify"], [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY]),
    ("ed25519", ["sign", "verify"], [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY]),
    ("rsa-2048", ["sign", "verify", "encrypt", "decrypt"], [C.CKO_PRIVATE_KEY, C.CKO_PUBLIC_KEY]),
])
def test_create_makes_version_1_as_key_objects(gov, algorithm, usage, classes):
    rec = gov.create_key(ALICE, "k1", algorithm, usage, description="d", owner="team")
    assert rec.primary == 1 and rec.next_version == 2 and rec.versions[0].state == R.ENABLED
    assert rec.usage == sorted(usage)
    objs = objects_of(gov, rec, 1)
    assert [o.cls for o in objs] == classes
    for o in objs:
        a = o.attrs
        assert a[C.CKA_FERRO_KEY_ID] == rec.id.encode() and a[C.CKA_FERRO_VERSION] == 1
        assert a[C.CKA_FERRO_STATE] == C.FERRO_STATE_ENABLED and a[C.CKA_FERRO_PRIMARY] is True
        assert a[C.CKA_LABEL] == b"k1" and a[C.CKA_ID] == f"{rec.id}/v1".encode()
        assert not a[C.CKA_MODIFIABLE] and not a[C.CKA_DESTROYABLE] and not a[C.CKA_COPYABLE]
        assert a[C.CKA_TOKEN] and a[C.CKA_PRIVATE] and not a.get(C.CKA_DERIVE)
    if classes == [C.CKO_SECRET_KEY]:
        assert objs[0].attrs[C.CKA_SENSITIVE] and not objs[0].attrs[C.CKA_EXTRACTABLE]
    assert gov.get_key("k1") == rec == gov.get_key(rec.id)
    assert actions(gov) == ["key.create"] and gov.events[0]["actor"] is ALICE


def test_usage_attributes_follow_the_usage_set(gov):
    rec = gov.create_key(ALICE, "enc", "aes-256-gcm", ["encrypt", "decrypt"])
    a = objects_of(gov, rec, 1)[0].attrs
    assert a[C.CKA_ENCRYPT] and a[C.CKA_DECRYPT] and not a[C.CKA_WRAP] and not a[C.CKA_SIGN]
    rec = gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
    priv, pub = objects_of(gov, rec, 1)
    assert priv.attrs[C.CKA_SIGN] and not priv.attrs[C.CKA_DECRYPT] and pub.attrs[C.CKA_VERIFY]
    rec = gov.create_key(ALICE, "mac", "hmac-sha256", ["mac"])
    a = objects_of(gov, rec, 1)[0].attrs
    assert a[C.CKA_SIGN] and a[C.CKA_VERIFY] and not a[C.CKA_ENCRYPT]


@pytest.mark.parametrize("kwargs, code", [
    (dict(name="", algorithm="aes-256-gcm", usage=["encrypt"]), "invalid_argument"),
    (dict(name="a@b", algorithm="aes-256-gcm", usage=["encrypt"]), "invalid_argument"),
    (dict(name="x" * 129, algorithm="aes-256-gcm", usage=["encrypt"]), "invalid_argument"),
    (dict(name="6f1c8a6e-2b36-4b8f-9a39-0c8f3f7a2b11", algorithm="aes-256-gcm", usage=["encrypt"]),
     "invalid_argument"),
    (dict(name="k", algorithm="des", usage=["encrypt"]), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage=[]), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage="encrypt"), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage=["sign"]), "invalid_argument"),
    (dict(name="k", algorithm="ec-p256", usage=["encrypt"]), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage=["encrypt"], rotation_period_days=0), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage=["encrypt"], rotation_period_days=366), "invalid_argument"),
    (dict(name="k", algorithm="aes-256-gcm", usage=["encrypt"], tags=["nope"]), "not_found"),
])
def test_create_refuses_bad_input(gov, kwargs, code):
    refused(code, gov.create_key, ALICE, **kwargs)
    assert gov.list_keys() == ([], None) and all(e["outcome"] == "denied" for e in gov.events)


def test_names_are_unique(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"])
    refused("conflict", gov.create_key, BOB, "k", "hmac-sha256", ["mac"])
    refused("not_found", gov.get_key, "other")


def test_needs_the_user_logged_in(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"])
    gov.token.logout()
    refused("failed_precondition", gov.get_key, "k")
    refused("failed_precondition", gov.rotate, ALICE, "k")


# --- rotate, rollback, version states -------------------------------------------------------
def test_rotate_moves_the_primary_and_the_label(gov):
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    rec = gov.rotate(ALICE, "k")
    assert rec.primary == 2 and [v.state for v in rec.versions] == [R.ENABLED, R.ENABLED]
    (v1,), (v2,) = objects_of(gov, rec, 1), objects_of(gov, rec, 2)
    assert v1.attrs[C.CKA_LABEL] == b"k@v1" and v1.attrs[C.CKA_FERRO_PRIMARY] is False
    assert v2.attrs[C.CKA_LABEL] == b"k" and v2.attrs[C.CKA_FERRO_PRIMARY] is True
    assert v1.attrs[C.CKA_VALUE] != v2.attrs[C.CKA_VALUE]
    # a label search finds exactly the primary
    found = [o for o in gov.token.index.candidates({C.CKA_LABEL: b"k", C.CKA_CLASS: C.CKO_SECRET_KEY})
             if gov.token.matches(o, {C.CKA_LABEL: b"k", C.CKA_CLASS: C.CKO_SECRET_KEY})]
    assert found == [v2]
    assert R.permits(rec, 1, "decrypt") is None and R.permits(rec, 1, "encrypt") is not None
    assert actions(gov) == ["key.create", "key.rotate"]


def test_version_object_gives_the_primary_for_producing_uses(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.rotate(ALICE, "k")
    enc = gov.token.open(gov.version_object("k", None, "encrypt"))
    assert enc.attrs[C.CKA_FERRO_VERSION] == 2
    ct = AESGCM(enc.attrs[C.CKA_VALUE]).encrypt(b"\0" * 12, b"data", None)
    dec = gov.token.open(gov.version_object("k", 2, "decrypt"))
    assert AESGCM(dec.attrs[C.CKA_VALUE]).decrypt(b"\0" * 12, ct, None) == b"data"
    assert gov.version_object("k", 1, "decrypt").attrs[C.CKA_FERRO_VERSION] == 1
    refused("failed_precondition", gov.version_object, "k", 1, "encrypt")
    refused("failed_precondition", gov.version_object, "k", None, "sign")
    refused("not_found", gov.version_object, "nope", None, "encrypt")
    refused("invalid_argument", gov.version_object, "k", None, "fly")


def test_version_object_of_a_pair_is_the_half_that_does_it(gov):
    rec = gov.create_key(ALICE, "s", "ec-p256", ["sign", "verify"])
    assert gov.version_object("s", None, "sign").cls == C.CKO_PRIVATE_KEY
    assert gov.version_object("s", 1, "verify").cls == C.CKO_PUBLIC_KEY
    assert rec.version(1).objects[0] == gov.version_object("s", None, "sign").uid


def test_pending_rotation_waits_for_the_validation_window(gov):
    gov.create_key(ALICE, "k", "ed25519", ["sign", "verify"])
    rec = gov.rotate(ALICE, "k", pending=True)
    assert rec.primary == 1 and rec.version(2).state == R.PENDING
    assert objects_of(gov, rec, 2)[0].attrs[C.CKA_FERRO_STATE] == C.FERRO_STATE_PENDING
    refused("failed_precondition", gov.version_object, "k", 2, "verify")
    assert gov.tick() == []
    gov.clock.advance(DAY)
    assert gov.tick() == [("key.enable_pending", rec.id, 2)]
    rec = gov.get_key("k")
    assert rec.primary == 2 and rec.version(2).state == R.ENABLED
    assert gov.events[-1]["actor"] is SCHEDULER


def test_rollback_to_an_enabled_version_only(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.rotate(ALICE, "k")
    gov.rotate(ALICE, "k")
    rec = gov.update_primary(BOB, "k", 1)
    assert rec.primary == 1
    assert objects_of(gov, rec, 1)[0].attrs[C.CKA_LABEL] == b"k"
    assert objects_of(gov, rec, 3)[0].attrs[C.CKA_LABEL] == b"k@v3"
    gov.disable_version(ALICE, "k", 2)
    refused("failed_precondition", gov.update_primary, BOB, "k", 2)
    refused("not_found", gov.update_primary, BOB, "k", 9)
    refused("invalid_argument", gov.update_primary, BOB, "k", "1")
    assert gov.get_key("k").primary == 1


def test_disable_enable(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    refused("failed_precondition", gov.disable_version, ALICE, "k", 1)      # the primary
    gov.rotate(ALICE, "k")
    rec = gov.disable_version(ALICE, "k", 1)
    assert rec.version(1).state == R.DISABLED and rec.version(1).disabled_at is not None
    assert objects_of(gov, rec, 1)[0].attrs[C.CKA_FERRO_STATE] == C.FERRO_STATE_DISABLED
    assert R.permits(rec, 1, "decrypt") is not None
    refused("failed_precondition", gov.disable_version, ALICE, "k", 1)
    rec = gov.enable_version(ALICE, "k", 1)
    assert rec.version(1).state == R.ENABLED
    refused("failed_precondition", gov.enable_version, ALICE, "k", 1)


def test_revoke_records_why_and_compromise_never_returns(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    refused("failed_precondition", gov.revoke, ALICE, "k", 1, "superseded")        # the primary
    gov.rotate(ALICE, "k")
    gov.rotate(ALICE, "k")
    refused("invalid_argument", gov.revoke, ALICE, "k", 1, "bored")
    rec = gov.revoke(ALICE, "k", 1, "superseded")
    assert rec.version(1).state == R.DISABLED and rec.version(1).revocation["reason"] == "superseded"
    assert rec.version(1).revocation["by"] == "alice"
    gov.enable_version(ALICE, "k", 1)                                             # superseded: may return
    rec = gov.revoke(ALICE, "k", 2, "key_compromise")
    refused("failed_precondition", gov.enable_version, ALICE, "k", 2)
    refused("failed_precondition", gov.update_primary, ALICE, "k", 2)
    assert [e["message"] for e in gov.events if e["action"] == "key.revoke" and e["outcome"] == "ok"] == [
        "superseded", "key_compromise"]


def test_floors_only_rise(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    for _ in range(3):
        gov.rotate(ALICE, "k")
    rec = gov.set_floors(ALICE, "k", min_decrypt_version=2)
    assert (rec.min_decrypt_version, rec.min_encrypt_version) == (2, 2)      # encrypt floor follows
    rev = rec.policy_revision
    rec = gov.set_floors(ALICE, "k", min_encrypt_version=3)
    assert (rec.min_decrypt_version, rec.min_encrypt_version) == (2, 3) and rec.policy_revision == rev + 1
    refused("failed_precondition", gov.set_floors, ALICE, "k", min_decrypt_version=1)
    refused("failed_precondition", gov.set_floors, ALICE, "k", min_encrypt_version=5)   # above the primary (4)
    refused("invalid_argument", gov.set_floors, ALICE, "k", min_decrypt_version=0)
    assert R.permits(gov.get_key("k"), 1, "decrypt") is not None
    refused("failed_precondition", gov.update_primary, ALICE, "k", 2)              # below min_encrypt


def test_flags_are_one_way(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    rec = gov.set_flags(ALICE, "k", exportable=True)
    assert rec.exportable and not rec.allow_plaintext_backup
    refused("failed_precondition", gov.set_flags, ALICE, "k", exportable=False)
    refused("invalid_argument", gov.set_flags, ALICE, "k", exportable="yes")
    rec = gov.rotate(ALICE, "k")
    assert objects_of(gov, rec, 2)[0].attrs[C.CKA_EXTRACTABLE] is True       # versions made from then on
    assert objects_of(gov, rec, 1)[0].attrs[C.CKA_EXTRACTABLE] is False


# --- destroy ------------------------------------------------------------------------------
def test_destroy_after_the_grace_period_erases_the_material(gov):
    gov.create_key(ALICE, "k", "ec-p256", ["sign", "verify"])
    gov.rotate(ALICE, "k")
    refused("failed_precondition", gov.schedule_destroy, ALICE, "k", 2)        # the primary
    rec = gov.schedule_destroy(ALICE, "k", 1)
    v1 = rec.version(1)
    assert v1.state == R.DESTROY_SCHEDULED and v1.destroy_at == gov.clock.now + DAY
    uids = list(v1.objects)
    gov.clock.advance(DAY - 1)
    assert gov.tick() == []
    gov.clock.advance(1)
    assert gov.tick() == [("key.destroyed", rec.id, 1)]
    rec = gov.get_key("k")
    assert rec.version(1).state == R.DESTROYED and rec.version(1).destroyed_at == gov.clock.now
    assert all(uid not in gov.token.by_uid for uid in uids)
    assert gov.token.store.load(uids[0]) is None
    assert "erased" in gov.events[-1]["message"] and gov.events[-1]["action"] == "key.destroyed"
    for fn in (gov.restore, gov.enable_version, gov.update_primary, gov.schedule_destroy):
        refused("failed_precondition", fn, ALICE, "k", 1)
    refused("failed_precondition", gov.version_object, "k", 1, "verify")


def test_restore_cancels_the_destruction(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.rotate(ALICE, "k")
    gov.schedule_destroy(ALICE, "k", 1)
    refused("failed_precondition", gov.restore, ALICE, "k", 2)
    rec = gov.restore(ALICE, "k", 1)
    assert rec.version(1).state == R.DISABLED and rec.version(1).destroy_at is None
    gov.clock.advance(2 * DAY)
    assert gov.tick() == []
    assert gov.token.by_uid.get(rec.version(1).objects[0]) is not None


def test_retention_and_grace_come_from_the_tags(gov):
    gov.put_tag(CAROL, R.PolicyTag("keep", retention_days=30, destroy_grace_seconds=7 * DAY))
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], tags=["keep"])
    gov.rotate(ALICE, "k")
    refused("failed_precondition", gov.schedule_destroy, ALICE, "k", 1)
    gov.clock.advance(30 * DAY)
    rec = gov.schedule_destroy(ALICE, "k", 1)
    assert rec.version(1).destroy_at == gov.clock.now + 7 * DAY


# --- automatic rotation -----------------------------------------------------------------
def test_automatic_rotation_by_key_and_by_tag(gov):
    gov.put_tag(CAROL, R.PolicyTag("monthly", rotation_period_days=30))
    a = gov.create_key(ALICE, "a", "aes-256-gcm", ["encrypt"], rotation_period_days=7)
    b = gov.create_key(ALICE, "b", "aes-256-gcm", ["encrypt"], tags=["monthly"])
    c = gov.create_key(ALICE, "c", "aes-256-gcm", ["encrypt"])
    assert c.next_rotation_at is None and b.next_rotation_at == gov.clock.now + 30 * DAY
    gov.clock.advance(7 * DAY)
    assert gov.tick() == [("key.auto_rotate", a.id, 2)]
    gov.clock.advance(23 * DAY)                     # a was due at day 14: one rotation per tick, then due again
    assert sorted(gov.tick()) == sorted([("key.auto_rotate", a.id, 3), ("key.auto_rotate", b.id, 2)])
    assert gov.get_key("a").next_rotation_at == gov.clock.now + 7 * DAY
    assert gov.get_key("c").primary == 1
    assert gov.events[-1]["action"] == "key.auto_rotate" and gov.events[-1]["actor"] is SCHEDULER


# --- tags ---------------------------------------------------------------------------------
def test_tags_persist_and_validate(gov):
    gov.put_tag(CAROL, R.PolicyTag("t1", dual_control=True, quorum=3))
    assert gov.get_tag("t1").quorum == 3 and gov.get_tag("t1").revision == 1
    assert [t.name for t in gov.list_tags()] == ["t1"]
    refused("not_found", gov.get_tag, "t2")
    for bad in (R.PolicyTag("x", quorum=1), R.PolicyTag("x", rotation_period_days=400),
                R.PolicyTag("x", security_level="quantum"), R.PolicyTag("", quorum=2),
                R.PolicyTag("x", dual_control="yes")):
        refused("invalid_argument", gov.put_tag, CAROL, bad)
    refused("invalid_argument", gov.put_tag, CAROL, {"name": "x"})


def test_attach_detach_raise_the_policy_revision(gov):
    gov.put_tag(CAROL, R.PolicyTag("t"))
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"])
    rec = gov.attach_tag(ALICE, "k", "t")
    assert rec.tags == ["t"] and rec.policy_revision == 2
    refused("not_found", gov.attach_tag, ALICE, "k", "nope")
    rec = gov.detach_tag(ALICE, "k", "t")
    assert rec.tags == [] and rec.policy_revision == 3
    refused("not_found", gov.detach_tag, ALICE, "k", "t")


# --- dual control -------------------------------------------------------------------------
@pytest.fixture
def dual(gov):
    gov.put_tag(CAROL, R.PolicyTag("pci", dual_control=True, quorum=2, approval_ttl_seconds=3600))
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], tags=["pci"])
    gov.rotate(ALICE, "k")
    gov.rotate(ALICE, "k")
    return gov


def test_dual_control_destroy_needs_two_distinct_approvers_never_the_requester(dual):
    gov = dual
    err = refused("approval_required", gov.schedule_destroy, ALICE, "k", 1)
    approval = err.approval
    assert approval.action == "destroy" and approval.requester == "alice" and approval.status == "pending"
    assert gov.get_key("k").version(1).state == R.ENABLED                  # did not run
    assert gov.list_approvals("pending")[0].id == approval.id
    refused("permission_denied", gov.approve, ALICE, approval.id)          # the requester
    refused("permission_denied", gov.approve, AUDITOR, approval.id)        # wrong role
    refused("approval_required", gov.schedule_destroy, ALICE, "k", 1, approval_id=approval.id)
    gov.approve(BOB, approval.id)
    refused("conflict", gov.approve, BOB, approval.id)                     # distinct subjects
    refused("approval_required", gov.schedule_destroy, ALICE, "k", 1, approval_id=approval.id)
    assert gov.approve(CAROL, approval.id).status == "approved"
    refused("permission_denied", gov.schedule_destroy, ALICE, "k", 2, approval_id=approval.id)   # another request
    rec = gov.schedule_destroy(ALICE, "k", 1, approval_id=approval.id)
    assert rec.version(1).state == R.DESTROY_SCHEDULED
    assert gov.get_approval(approval.id).status == "executed"
    gov.restore(ALICE, "k", 1)
    refused("failed_precondition", gov.schedule_destroy, ALICE, "k", 1, approval_id=approval.id)   # replayed
    assert [e["action"] for e in gov.events if e["action"].startswith("approval.") and e["outcome"] == "ok"] == [
        "approval.requested", "approval.approved", "approval.approved", "approval.executed"]
    assert [e["action"] for e in gov.events if e["outcome"] == "denied"].count("approval.approve") == 3


def test_dual_control_rollback_and_deny(dual):
    gov = dual
    approval = refused("approval_required", gov.update_primary, ALICE, "k", 1).approval
    assert approval.action == "rollback"
    assert gov.deny(BOB, approval.id).status == "denied"
    refused("failed_precondition", gov.approve, CAROL, approval.id)
    refused("failed_precondition", gov.update_primary, ALICE, "k", 1, approval_id=approval.id)
    assert gov.get_key("k").primary == 3
    assert "approval.denied" in actions(gov)


def test_approvals_expire(dual):
    gov = dual
    approval = refused("approval_required", gov.update_primary, ALICE, "k", 1).approval
    gov.approve(BOB, approval.id)
    gov.clock.advance(3600)
    refused("failed_precondition", gov.approve, CAROL, approval.id)
    assert gov.get_approval(approval.id).status == "expired"
    other = refused("approval_required", gov.update_primary, ALICE, "k", 1).approval
    gov.clock.advance(3600)
    assert ("approval.expired", other.id, None) in gov.tick()
    assert gov.get_approval(other.id).status == "expired"
    assert actions(gov).count("approval.expired") == 2


def test_a_policy_change_invalidates_pending_approvals(dual):
    gov = dual
    approval = refused("approval_required", gov.update_primary, ALICE, "k", 1).approval
    gov.approve(BOB, approval.id)
    gov.approve(CAROL, approval.id)
    gov.set_floors(ALICE, "k", min_decrypt_version=1, min_encrypt_version=1) and None   # no change: no new revision
    gov.put_tag(CAROL, R.PolicyTag("other"))
    gov.attach_tag(ALICE, "k", "other")                                   # the key's policy changed
    refused("failed_precondition", gov.update_primary, ALICE, "k", 1, approval_id=approval.id)
    assert gov.get_approval(approval.id).status == "invalidated"


def test_weakening_a_dual_control_tag_is_dual_controlled(dual):
    gov = dual
    approval = refused("approval_required", gov.put_tag, CAROL,
                       R.PolicyTag("pci", dual_control=False)).approval
    assert approval.action == "weaken_tag" and gov.get_tag("pci").dual_control
    gov.put_tag(CAROL, R.PolicyTag("pci", dual_control=True, quorum=3, approval_ttl_seconds=3600))   # stronger: runs
    assert gov.get_tag("pci").quorum == 3 and gov.get_tag("pci").revision == 2
    refused("approval_required", gov.detach_tag, ALICE, "k", "pci")
    refused("approval_required", gov.set_flags, ALICE, "k", exportable=True)


def test_weaken_tag_with_quorum(dual):
    gov = dual
    tag = R.PolicyTag("pci", dual_control=False)
    approval = refused("approval_required", gov.put_tag, CAROL, tag).approval
    gov.approve(ALICE, approval.id)
    gov.approve(BOB, approval.id)
    assert gov.put_tag(CAROL, tag, approval_id=approval.id).dual_control is False
    rec = gov.update_primary(ALICE, "k", 1)                                  # no longer controlled
    assert rec.primary == 1


# --- adopt --------------------------------------------------------------------------------
def _plain_aes(gov):
    from provider import keygen
    given = {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 32, C.CKA_TOKEN: True,
             C.CKA_PRIVATE: True, C.CKA_LABEL: b"legacy"}
    with gov.token.transaction():
        obj = keygen.generate_key(gov.token, C.CKM_AES_KEY_GEN, None, given, False)
    return obj


def test_adopt_makes_a_plain_key_version_1(gov):
    obj = _plain_aes(gov)
    refused("permission_denied", gov.adopt, ALICE, obj.uid, "legacy", "aes-256-gcm", ["encrypt", "decrypt"])
    refused("invalid_argument", gov.adopt, CAROL, obj.uid, "legacy", "hmac-sha256", ["mac"])
    refused("not_found", gov.adopt, CAROL, "nope", "legacy", "aes-256-gcm", ["encrypt"])
    rec = gov.adopt(CAROL, obj.uid, "legacy", "aes-256-gcm", ["encrypt", "decrypt"])
    assert rec.adopted_from == obj.uid and rec.version(1).objects == [obj.uid]
    a = gov.token.by_uid[obj.uid].attrs
    assert a[C.CKA_FERRO_KEY_ID] == rec.id.encode() and a[C.CKA_FERRO_PRIMARY] is True
    assert not a[C.CKA_DESTROYABLE] and not a[C.CKA_MODIFIABLE] and a[C.CKA_LABEL] == b"legacy"
    refused("failed_precondition", gov.adopt, CAROL, obj.uid, "again", "aes-256-gcm", ["encrypt"])
    assert gov.rotate(ALICE, "legacy").primary == 2


def test_adopt_under_a_dual_control_tag_needs_approval(gov):
    gov.put_tag(CAROL, R.PolicyTag("pci", dual_control=True))
    obj = _plain_aes(gov)
    approval = refused("approval_required", gov.adopt, CAROL, obj.uid, "legacy", "aes-256-gcm", ["encrypt"],
                       tags=["pci"]).approval
    gov.approve(ALICE, approval.id)
    gov.approve(BOB, approval.id)
    rec = gov.adopt(CAROL, obj.uid, "legacy", "aes-256-gcm", ["encrypt"], tags=["pci"], approval_id=approval.id)
    assert rec.tags == ["pci"]


# --- listing ------------------------------------------------------------------------------
def test_list_filters_and_pages(gov):
    gov.put_tag(CAROL, R.PolicyTag("t"))
    for i in range(7):
        gov.create_key(ALICE, f"key-{i}", "aes-256-gcm" if i % 2 else "hmac-sha256",
                       ["encrypt"] if i % 2 else ["mac"], tags=["t"] if i < 3 else [])
    gov.create_key(ALICE, "other", "ed25519", ["sign", "verify"])
    gov.rotate(ALICE, "other", pending=True)
    page, token = gov.list_keys(page_size=3)
    names = [k.name for k in page]
    while token:
        page, token = gov.list_keys(page_size=3, page_token=token)
        names += [k.name for k in page]
    assert names == sorted(f"key-{i}" for i in range(7)) + ["other"]
    assert [k.name for k in gov.list_keys(tag="t")[0]] == ["key-0", "key-1", "key-2"]
    assert [k.name for k in gov.list_keys(algorithm="aes-256-gcm")[0]] == ["key-1", "key-3", "key-5"]
    assert [k.name for k in gov.list_keys(name_prefix="oth")[0]] == ["other"]
    assert [k.name for k in gov.list_keys(state="pending")[0]] == ["other"]
    for bad in (dict(page_size=0), dict(page_size=1001), dict(state="on"), dict(algorithm="x"),
                dict(page_token="!!!"), dict(page_token=5)):
        refused("invalid_argument", gov.list_keys, **bad)


def test_records_are_not_made_through_pkcs11_templates():
    """CKO_FERRO_* records need CKA_FERRO_RECORD, which no template may set."""
    from provider import schema
    table = schema.rows(C.CKO_FERRO_GOVERNED_KEY, None)
    with pytest.raises(Exception):
        schema.check_template(table, {C.CKA_CLASS: C.CKO_FERRO_GOVERNED_KEY, C.CKA_FERRO_RECORD: b"{}"},
                              schema.F.CREATE)
    with pytest.raises(Exception):
        schema.check_required(table, {C.CKA_CLASS: C.CKO_FERRO_GOVERNED_KEY})


# --- audit: refusals, fail closed ---------------------------------------------------------------
def test_a_refusal_is_audited(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    refused("failed_precondition", gov.disable_version, BOB, "k", 1)
    event = gov.events[-1]
    assert event["action"] == "key.disable_version" and event["outcome"] == "denied"
    assert event["actor"] is BOB and event["subject"] == "k" and event["code"] == "failed_precondition"
    assert "primary" in event["message"]


def test_the_audit_fails_closed(gov):
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    before = gov.get_key("k")
    objects = len(gov.token.by_uid)

    def broken(event):
        raise OSError("disk full")
    gov.audit = broken
    refused("unavailable", gov.rotate, ALICE, "k")
    refused("unavailable", gov.create_key, ALICE, "k2", "aes-256-gcm", ["encrypt"])
    gov.token.refresh()
    assert gov.get_key("k") == before and len(gov.token.by_uid) == objects    # nothing half-written
    refused("not_found", gov.get_key, "k2")


# --- placement (the environment's rule) and the scheduler thread ------------------------------
def test_a_hardware_tag_refuses_a_software_backend(gov):
    asked = []

    def placement(level, backend):
        asked.append((level, backend))
        return "production refuses a software backend for hardware keys" if (level, backend) == (
            "hardware", "soft") else None
    gov.placement = placement
    gov.put_tag(CAROL, R.PolicyTag("hsm", security_level="hardware"))
    refused("failed_precondition", gov.create_key, ALICE, "k", "ec-p256", ["sign", "verify"], tags=["hsm"])
    assert gov.list_keys() == ([], None) and len(gov.token.by_uid) == 1        # (the tag record only)
    gov.create_key(ALICE, "k", "ec-p256", ["sign", "verify"])
    refused("failed_precondition", gov.attach_tag, ALICE, "k", "hsm")
    assert gov.get_key("k").tags == []
    assert asked == [("hardware", "soft"), ("software", "soft"), ("hardware", "soft")]


def test_the_scheduler_thread_ticks(gov):
    import time as _time

    from provider.governance import Scheduler
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt"], rotation_period_days=1)
    gov.clock.advance(DAY)
    scheduler = Scheduler(gov, interval=0.05).start()
    try:
        deadline = _time.monotonic() + 10
        while gov.get_key("k").primary != 2 and _time.monotonic() < deadline:
            _time.sleep(0.02)
    finally:
        scheduler.stop(timeout=5)
    assert gov.get_key("k").primary == 2 and scheduler.ticks >= 1
    with pytest.raises(ValueError):
        Scheduler(gov, interval=0)


def test_completed_approvals_are_pruned_after_their_retention(dual):
    gov = dual
    gov.approval_retention_days = 30
    done = refused("approval_required", gov.update_primary, ALICE, "k", 1).approval
    gov.deny(BOB, done.id)
    gov.clock.advance(2 * DAY)
    live = refused("approval_required", gov.update_primary, ALICE, "k", 2).approval
    gov.clock.advance(29 * DAY)
    result = gov.tick()
    assert ("approval.pruned", done.id, None) in result and ("approval.expired", live.id, None) in result
    assert [a.id for a in gov.list_approvals()] == [live.id]
    refused("not_found", gov.get_approval, done.id)
