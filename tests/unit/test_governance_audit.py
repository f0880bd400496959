"""Governance wired to the real audit chain (provider/audit) on a sqlite token: each
transition's record is in the store's chain, committed with the change, verifiable;
refusals and approvals recorded; no key material in any record."""

import json

import pytest

from provider import constants as C
from provider.audit import Audit, verify
from provider.audit import verifier as V
from provider.governance import Governance, GovernanceError, auditing
from provider.governance import record as R

from .govkit import ALICE, BOB, CAROL, Clock, new_token

KEY = b"k" * 32


@pytest.fixture
def wired(tmp_path):
    token = new_token("sqlite", tmp_path)
    audit = Audit(token.store, KEY)
    gov = Governance(token, auditing.recorder(audit), clock=Clock())
    yield gov, audit
    token.store.close()


def bodies(store):
    return [json.loads(body) for _, body in V.rows_of(store)]


def test_transitions_land_in_the_chain_and_verify(wired):
    gov, audit = wired
    rec = gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    gov.rotate(BOB, "k")
    with pytest.raises(GovernanceError):
        gov.disable_version(BOB, "k", 2)                      # the primary: refused, recorded
    records = bodies(gov.token.store)
    assert [(r["action"], r["outcome"], r["actor"], r["key_version"]) for r in records] == [
        ("key.create", "ok", "alice", 1), ("key.rotate", "ok", "bob", 2),
        ("key.disable_version", "denied", "bob", 0)]
    assert records[0]["key_id"] == rec.id and records[1]["interface"] == "rest"
    assert "subject=k" in records[2]["message"] and "code=failed_precondition" in records[2]["message"]
    assert verify(V.rows_of(gov.token.store), [], None, KEY).ok
    secrets = [gov.token.open(gov.token.by_uid[v.objects[0]]).attrs[C.CKA_VALUE]
               for v in gov.get_key("k").versions]
    raw = b"".join(body for _, body in V.rows_of(gov.token.store))
    assert all(s not in raw and s.hex().encode() not in raw for s in secrets)


def test_approvals_are_recorded(wired):
    gov, audit = wired
    gov.put_tag(CAROL, R.PolicyTag("pci", dual_control=True))
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"], tags=["pci"])
    gov.rotate(ALICE, "k")
    with pytest.raises(GovernanceError) as e:
        gov.update_primary(ALICE, "k", 1)
    approval = e.value.approval
    gov.approve(BOB, approval.id)
    gov.approve(CAROL, approval.id)
    gov.update_primary(ALICE, "k", 1, approval_id=approval.id)
    actions = [(r["action"], r["outcome"]) for r in bodies(gov.token.store)]
    assert actions[-5:] == [("approval.requested", "requested"), ("approval.approved", "ok"),
                            ("approval.approved", "ok"), ("approval.executed", "ok"), ("key.update_primary", "ok")]
    assert all(f"approval_id={approval.id}" in r["message"] for r in bodies(gov.token.store)[-5:-1])


def test_a_change_and_its_record_commit_together(wired, monkeypatch):
    gov, audit = wired
    gov.create_key(ALICE, "k", "aes-256-gcm", ["encrypt", "decrypt"])
    head = gov.token.store.audit_head()

    def refuse(rows):
        raise OSError("the audit table is gone")
    monkeypatch.setattr(gov.token.store, "audit_append", refuse)
    with pytest.raises(GovernanceError) as e:
        gov.rotate(ALICE, "k")
    assert e.value.code == "unavailable"
    monkeypatch.undo()
    gov.token.refresh()
    assert gov.get_key("k").primary == 1 and gov.get_key("k").next_version == 2
    assert gov.token.store.audit_head() == head
