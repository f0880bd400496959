"""`ferrohsm audit ...` on a real token: the public key, an export, and the offline
verify of the export (and of the store) with the public key and the HMAC key, which
catches a changed record and exits 1."""

import pytest
from typer.testing import CliRunner

from provider import constants as C
from provider.audit import Event, open_audit
from provider.cli import app
from provider.principal import Principal

from .conftest import RW, USER_PIN, init_token, make_library


@pytest.fixture
def logged(tmp_path, monkeypatch):
    lib = make_library(tmp_path)
    monkeypatch.setenv("FERROHSM_CONF", str(tmp_path / "ferrohsm.conf"))
    slot = init_token(lib, b"audited")
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    token = lib.tokens[slot]
    audit = open_audit(lib.config, token.store, token)
    for i in range(12):
        audit.record(Event(Principal("op:alice", frozenset({"operator"}), "cli"), "key.rotate", f"k{i}", 2))
    assert audit.checkpoint().seq == 12
    audit.record(Event(Principal("op:alice"), "key.create", "k99"))
    lib.finalize()
    return tmp_path


def run(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_export_and_verify_offline(logged):
    code, public = run("audit", "public-key", "--token", "audited")
    assert code == 0 and len(public.strip()) == 64
    export, cps = logged / "export.jsonl", logged / "cps.jsonl"
    code, text = run("audit", "export", "--token", "audited", "--out", str(export), "--checkpoints-out", str(cps))
    assert code == 0 and "13 records" in text
    hmac = f"file:{logged / 'tokens' / 'audit-hmac.key'}"
    code, text = run("audit", "verify", "--file", str(export), "--checkpoints", str(cps),
                     "--public-key", public.strip(), "--hmac-key", hmac)
    assert code == 0 and "OK: 13 records" in text and "1 checkpoints" in text, text
    code, text = run("audit", "verify", "--token", "audited", "--public-key", public.strip(), "--hmac-key", hmac)
    assert code == 0 and "OK: 13 records" in text, text
    lines = export.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b"key.rotate", b"key.delete")
    export.write_bytes(b"".join(lines))
    code, text = run("audit", "verify", "--file", str(export), "--checkpoints", str(cps),
                     "--public-key", public.strip(), "--hmac-key", hmac)
    assert code == 1 and "FAILED at record 5" in text, text
    code, text = run("audit", "verify", "--file", str(export), "--checkpoints", str(cps), "--public-key", "00" * 32)
    assert code == 1 and "signature" in text


def test_bad_arguments_are_clear_errors(logged):
    code, text = run("audit", "verify", "--file", str(logged / "missing.jsonl"))
    assert code == 2 and "error" in text
    code, text = run("audit", "verify", "--file", str(logged / "x"), "--public-key", "zz")
    assert code == 2 and "64 hex digits" in text
    code, text = run("audit", "export", "--out", str(logged / "e"))
    assert code == 2
