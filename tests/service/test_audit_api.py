"""The audit log over the API through real uvicorn: the query filtered by key id and
action, the export (JSON lines) and checkpoints that `ferrohsm audit verify --file`
accepts (the CLI run as a subprocess, catching an edited record in the download), and
the verifier run over the store (ok, records, the first failing record and why, the
last checkpoint) that catches a record edited in the store."""

import base64
import os
import sqlite3
import subprocess
import sys

import pytest

from provider.audit import verifier as V
from provider.audit.checkpoint import public_key_of
from provider.audit.record import line_of

from .conftest import ADMIN, AUDITOR, HMAC_KEY, OP, bearer

FERROHSM = [sys.executable, "-c", "from provider.cli import app; app()"]


def used(service, count=3):
    """Some history: a key made, rotated, used; a signed checkpoint over it all."""
    r = service.post("/v1/keys", headers=OP, json={"name": "k", "algorithm": "aes-256-gcm",
                                                   "usage": ["encrypt", "decrypt"]})
    assert r.status_code == 201
    service.post("/v1/keys/k/rotate", headers=OP)
    app = bearer(sub="app", roles=["service"], keys=["k"])
    for i in range(count):
        assert service.post("/v1/keys/k/encrypt", headers=app, json={"plaintext": "aGk="}).status_code == 200
    assert service.audit.checkpoint() is not None
    return r.json()["id"]


def run_verify(tmp_path, export: bytes, checkpoints: bytes, public: bytes):
    (tmp_path / "log.jsonl").write_bytes(export)
    (tmp_path / "cps.jsonl").write_bytes(checkpoints)
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC_KEY)
    os.chmod(key, 0o600)
    proc = subprocess.run(FERROHSM + ["audit", "verify", "--file", str(tmp_path / "log.jsonl"),
                                      "--checkpoints", str(tmp_path / "cps.jsonl"), "--public-key", public.hex(),
                                      "--hmac-key", f"file:{key}"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    return proc.returncode, proc.stdout + proc.stderr


def test_export_is_what_the_cli_exports_and_verifies_offline(service, tmp_path):
    used(service)
    r = service.get("/v1/audit/export", headers=AUDITOR)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    token = service.gov.token
    with token.lock:
        expected = b"".join(line_of(mac, body) for mac, body in V.rows_of(token.store))
        public = public_key_of(token)
    assert r.content == expected                            # line for line what `audit export` writes
    lines = r.content.splitlines(keepends=True)
    assert len(lines) == token.store.audit_head()[0]
    cps = service.get("/v1/audit/checkpoints", headers=ADMIN)
    assert cps.status_code == 200 and len(cps.content.splitlines()) == 1
    code, text = run_verify(tmp_path, r.content, cps.content, public)
    assert code == 0 and f"OK: {len(lines)} records" in text and "1 checkpoints" in text, text
    edited = list(lines)
    edited[3] = edited[3].replace(b'"outcome":"ok"', b'"outcome":"denied"')
    code, text = run_verify(tmp_path, b"".join(edited), cps.content, public)
    assert code == 1 and "FAILED at record 4" in text, text
    code, text = run_verify(tmp_path, b"".join(lines[:-1]), cps.content, public)       # truncated tail
    assert code == 1 and "truncated" in text, text


def test_verify_reports_on_the_store_and_catches_an_edit(service):
    used(service)
    service.post("/v1/keys/k/rotate", headers=OP)            # a record after the last checkpoint
    r = service.post("/v1/audit/verify", headers=AUDITOR)
    assert r.status_code == 200, r.text
    report = r.json()
    head = service.gov.token.store.audit_head()[0]
    assert report["ok"] is True and report["records"] == head and report["failed_seq"] is None
    assert report["checkpoints_verified"] == 1 and report["last_checkpoint"]["seq"] == head - 1
    assert report["public_key"] == public_key_of(service.gov.token).hex()
    with sqlite3.connect(service.gov.token.store.path) as db:            # an insider edits one stored record
        seq, data = db.execute("SELECT seq, data FROM audit_records WHERE seq = 5").fetchone()
        edited = data.replace(b'"outcome":"ok"', b'"outcome":"denied"')
        assert edited != data
        db.execute("UPDATE audit_records SET data = ? WHERE seq = ?", (edited, seq))
    report = service.post("/v1/audit/verify", headers=ADMIN).json()
    assert report["ok"] is False and report["failed_seq"] == 5 and "HMAC" in report["reason"], report
    assert report["records"] == 4


def test_query_filters_by_key_and_action(service):
    key_id = used(service)
    service.post("/v1/keys", headers=OP, json={"name": "other", "algorithm": "aes-256-gcm", "usage": ["encrypt"]})
    mine = service.get("/v1/audit", headers=AUDITOR, params={"key_id": key_id, "limit": 1000}).json()["records"]
    assert mine and all(x["key_id"] == key_id for x in mine)
    assert {x["action"] for x in mine} >= {"key.create", "key.rotate", "rest.encrypt"}
    encrypts = service.get("/v1/audit", headers=AUDITOR, params={"key_id": key_id, "action": "rest.encrypt"}).json()
    assert [x["action"] for x in encrypts["records"]] == ["rest.encrypt"] * 3
    page = service.get("/v1/audit", headers=AUDITOR, params={"action": "rest.encrypt", "limit": 2}).json()
    assert len(page["records"]) == 2
    rest = service.get("/v1/audit", headers=AUDITOR, params={"action": "rest.encrypt",
                                                             "after": page["next_after"]}).json()
    assert [x["seq"] for x in page["records"] + rest["records"]] == [x["seq"] for x in encrypts["records"]]
    assert service.get("/v1/audit", headers=AUDITOR, params={"action": "nothing"}).json()["records"] == []
    assert service.get("/v1/audit", headers=AUDITOR, params={"action": "a" * 65}).status_code == 422
    assert base64.b64encode(b"hi").decode() not in service.get("/v1/audit", headers=AUDITOR).text


@pytest.mark.parametrize("method, path", [("GET", "/v1/audit/export"), ("GET", "/v1/audit/checkpoints"),
                                          ("POST", "/v1/audit/verify")])
def test_only_auditors_and_administrators_read_the_audit(service, method, path):
    for who in (OP, bearer(sub="app", roles=["service"], keys=["k"])):
        r = service.request(method, path, headers=who)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert service.request(method, path).status_code == 401
    assert service.request(method, path, headers=AUDITOR).status_code == 200
