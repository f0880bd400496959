"""Governed keys through the built module, as a PKCS#11 client in another process sees them
(issue 12): the governance API (in this test's process, as the service runs it) rotates
and rolls back; a PyKCS11 client finds the primary by label, is refused the old version
for signing and every lifecycle change, and each of its *Init calls on the governed key is
a record of the token's audit chain, which `ferrohsm audit verify` accepts. When the audit
cannot be written, the use is refused (fail closed)."""

import json
import sys
from pathlib import Path

import pytest

from provider import constants as C
from provider.config import Config
from provider.governance import Governance
from provider.governance.auditing import recorder
from provider.library import Library
from provider.principal import Principal
from tests.e2e.conftest import USER_PIN
from tests.security.client import run
from tests.security.p11client import attack

ALICE = Principal("alice", frozenset({"operator"}), interface="rest")
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION

# the client's view: the object a label search finds, its version, and what each call returns
CLIENT = r'''
KEY_ID, VERSION, STATE = 0x80000000 | 0x46520003, 0x80000000 | 0x46520004, 0x80000000 | 0x46520005
def version_of(h):
    return int.from_bytes(bytes(s.getAttributeValue(h, [VERSION])[0]), "little")
found = find(s, LABEL="sig", CLASS=P.CKO_PRIVATE_KEY)
out["found"] = [version_of(h) for h in found]
(key,) = found
mech = P.Mechanism(P.CKM_ECDSA_SHA256, None)
out["sign"] = rv(s.sign, key, b"artefact", mech)
(other,) = find(s, LABEL="sig@v2", CLASS=P.CKO_PRIVATE_KEY)
out["sign_old"] = rv(s.sign, other, b"artefact", mech)
out["destroy"] = rv(s.destroyObject, key)
out["relabel"] = rv(s.setAttributeValue, key, [(P.CKA_LABEL, "mine")])
out["copy"] = P.CKR[copy(key, [(P.CKA_TOKEN, True)])[0]]
out["all"] = len(find(s))
out["record_search"] = len(find(s, CLASS=0x80000000 | 0x46520001))
(pub,) = find(s, LABEL="sig", CLASS=P.CKO_PUBLIC_KEY)
sig = s.sign(key, b"artefact", mech)
out["verify"] = rv(s.verify, pub, b"artefact", sig, mech)
(data,) = find(s, LABEL="data", CLASS=P.CKO_SECRET_KEY)
out["gcm"] = [rv(s.encrypt, data, b"x" * 64, P.AES_GCM_Mechanism(bytes([i]) * 12, b"", 128)) for i in range(3)]
'''


def _governance(hsm):
    """The governance API on the hsm's token "e2e", its user logged in, its audit chain."""
    lib = Library(Config.parse(hsm.conf.read_text(), str(hsm.conf)))
    slot = next(s for s in lib.get_slot_list(True) if lib.get_token_info(s)["label"].strip() == b"e2e")
    session = lib.open_session(slot, RW)
    lib.login(session, C.CKU_USER, USER_PIN.encode())
    token = lib.tokens[slot]
    return lib, Governance(token, recorder(token.audit), backends=lib.backends)


def _records(hsm) -> list:
    proc = hsm.run(_ferrohsm(), "audit", "export", "--token", "e2e", "--out", str(hsm.root / "log.jsonl"),
                   env={**hsm.env})
    assert proc.returncode == 0
    return [json.loads(line)["record"] for line in (hsm.root / "log.jsonl").read_text().splitlines()]


def _ferrohsm() -> str:
    return str(Path(sys.executable).parent / "ferrohsm")


def test_a_rollback_is_seen_by_a_pkcs11_client_in_another_process_and_its_uses_are_audited(token):
    lib, gov = _governance(token)
    try:
        gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
        gov.rotate(ALICE, "sig")
        gov.update_primary(ALICE, "sig", 1)                  # rollback: version 1 is the primary again
        gov.create_key(ALICE, "data", "aes-256-gcm", ["encrypt", "decrypt"])
    finally:
        lib.finalize()
    out = attack(token, CLIENT)
    assert out["found"] == [1]                               # exactly one object: the primary
    assert out["sign"] == "CKR_OK"
    assert out["sign_old"] == "CKR_KEY_FUNCTION_NOT_PERMITTED"   # version 2: verify only now
    assert out["destroy"] == out["relabel"] == out["copy"] == "CKR_ACTION_PROHIBITED"
    assert out["record_search"] == 2 and out["all"] == 5     # two pairs and a secret key; the records only by class
    assert out["verify"] == "CKR_OK"
    assert out["gcm"] == ["CKR_OK"] * 3
    records = _records(token)
    counts = [r for r in records if r["message"].endswith(" native uses")]    # the fast path's (test_native_uses.py)
    uses = [(r["action"], r["key_version"], r["outcome"], r["interface"]) for r in records
            if r["action"].startswith("pkcs11.") and r not in counts]
    assert uses == [("pkcs11.sign", 1, "ok", "pkcs11"), ("pkcs11.sign", 2, "denied", "pkcs11"),
                    ("pkcs11.sign", 1, "ok", "pkcs11"), ("pkcs11.verify", 1, "ok", "pkcs11")] \
        + [("pkcs11.encrypt", 1, "ok", "pkcs11")] * 3      # each init a record, natively run or not
    assert [(r["action"], r["message"]) for r in counts] == [("pkcs11.encrypt", "CKM_AES_GCM: 3 native uses")]
    assert [r["action"] for r in records if r["action"].startswith("key.")][:3] == [
        "key.create", "key.rotate", "key.update_primary"]
    assert all(r["actor"].startswith("pkcs11:") for r in records if r["action"].startswith("pkcs11."))
    verified = token.run(_ferrohsm(), "audit", "verify", "--file", str(token.root / "log.jsonl"), check=False)
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()


def test_a_governed_key_is_refused_when_its_audit_record_cannot_be_written(token):
    lib, gov = _governance(token)
    try:
        gov.create_key(ALICE, "sig", "ec-p256", ["sign", "verify"])
    finally:
        lib.finalize()
    with token.conf.open("a") as conf:               # the JSON-lines sink on a full disk
        conf.write('[audit]\nfile = "/dev/full"\n')
    out = run(token, r'''
s = session("user")
(key,) = find(s, LABEL="sig", CLASS=P.CKO_PRIVATE_KEY)
out["sign"] = rv(s.sign, key, b"artefact", P.Mechanism(P.CKM_ECDSA_SHA256, None))
k = s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_VALUE_LEN, 32)])
out["plain"] = rv(s.encrypt, k, b"data", P.AES_GCM_Mechanism(bytes(12), b"", 128))
''')
    assert out["sign"] == "CKR_FUNCTION_FAILED"      # no record, no signature
    assert out["plain"] == "CKR_OK"                  # an ungoverned key is not audited: it works on


@pytest.mark.parametrize("bad", ["CKA_FERRO_KEY_ID", "CKA_FERRO_STATE"])
def test_a_client_cannot_dress_its_own_key_as_governed(token, bad):
    value = {"CKA_FERRO_KEY_ID": "b'x'", "CKA_FERRO_STATE": "(2).to_bytes(8, 'little')"}[bad]
    cka = getattr(C, bad)
    out = run(token, rf'''
s = session("user")
out["create"] = rv(s.generateKey, [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                                   (P.CKA_VALUE_LEN, 32), ({cka}, {value})])
out["record"] = rv(s.createObject, [(P.CKA_CLASS, {C.CKO_FERRO_GOVERNED_KEY}), (P.CKA_TOKEN, True),
                                    ({C.CKA_FERRO_RECORD}, b"{{}}")])
''')
    assert out["create"] in ("CKR_ATTRIBUTE_READ_ONLY", "CKR_TEMPLATE_INCONSISTENT", "CKR_ATTRIBUTE_TYPE_INVALID")
    assert out["record"] in ("CKR_ATTRIBUTE_READ_ONLY", "CKR_TEMPLATE_INCONSISTENT", "CKR_TEMPLATE_INCOMPLETE")
