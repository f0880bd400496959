"""The audit fails closed through the API: when the audit's file sink cannot be written
(its path made a directory under it: unwritable even for root), a key use answers
503 `unavailable` and returns no ciphertext; once the sink is back, uses run again and
the audit holds exactly the uses that ran."""

import base64
import os
import shutil

import httpx
import pytest

from provider.audit import Audit
from provider.config import ServerSettings
from provider.governance import Governance
from provider.governance.auditing import recorder
from provider.service.app import create_app
from tests.unit.govkit import new_token

from .conftest import SECRET, Running, bearer


@pytest.fixture
def audited(tmp_path):
    """(an httpx client of a running service whose audit writes a JSON-lines file sink too,
    the sink's path)."""
    token = new_token("sqlite", tmp_path)
    sink = tmp_path / "audit.jsonl"
    audit = Audit(token.store, b"h" * 32, file=sink)
    token.audit = audit
    running = Running(create_app(Governance(token, recorder(audit)), ServerSettings(), SECRET))
    try:
        with httpx.Client(base_url=running.url) as c:
            yield c, sink
    finally:
        running.stop()
        token.store.close()


def test_unwritable_audit_refuses_the_use(audited):
    c, sink = audited
    assert c.post("/v1/keys", headers=bearer(roles=["operator"]),
                  json={"name": "k", "algorithm": "aes-256-gcm", "usage": ["encrypt"]}).status_code == 201
    app = bearer(sub="app", roles=["service"], keys=["k"])
    body = {"plaintext": base64.b64encode(b"secret plaintext").decode()}
    assert c.post("/v1/keys/k/encrypt", headers=app, json=body).status_code == 200
    saved = sink.read_bytes()
    os.remove(sink)
    os.mkdir(sink)                                   # the sink cannot be opened for writing
    r = c.post("/v1/keys/k/encrypt", headers=app, json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert "ciphertext" not in r.text and "secret plaintext" not in r.text
    shutil.rmtree(sink)
    sink.write_bytes(saved)
    assert c.post("/v1/keys/k/encrypt", headers=app, json=body).status_code == 200
    records = c.get("/v1/audit", headers=bearer(sub="dave", roles=["auditor"])).json()["records"]
    assert [x["outcome"] for x in records if x["action"] == "rest.encrypt"] == ["ok", "ok"]


def test_unwritable_audit_refuses_wrap_unwrap_and_batch_sign(audited):
    c, sink = audited
    op, admin = bearer(roles=["operator"]), bearer(sub="carol", roles=["administrator"])
    for name, algorithm, usage in (("kek", "aes-256-gcm", ["wrap", "unwrap"]),
                                   ("data", "aes-256-gcm", ["encrypt"]), ("s", "ed25519", ["sign"])):
        assert c.post("/v1/keys", headers=op, json={"name": name, "algorithm": algorithm,
                                                    "usage": usage}).status_code == 201
    assert c.post("/v1/keys/data/flags", headers=admin, json={"exportable": True}).status_code == 200
    assert c.post("/v1/keys/data/rotate", headers=op).status_code == 200
    app = bearer(sub="app", roles=["service"], keys=["kek", "data", "s"])
    wrapped = c.post("/v1/keys/kek/wrap", headers=app, json={"key": "data"}).json()["wrapped"]
    os.remove(sink)
    os.mkdir(sink)                                   # the sink cannot be opened for writing
    r = c.post("/v1/keys/kek/wrap", headers=app, json={"key": "data"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable" and "wrapped" not in r.text
    r = c.post("/v1/keys/kek/unwrap", headers=app, json={"wrapped": wrapped, "name": "copy",
                                                         "algorithm": "aes-256-gcm", "usage": ["encrypt"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    r = c.post("/v1/keys/s/sign/batch", headers=app, json={"items": [{"message": "aGk="}]})
    assert r.status_code == 503 and "signature" not in r.text
    assert c.get("/v1/keys/copy", headers=op).status_code == 404          # nothing was imported
