"""Issue 11 item 7: whoever can write the token files rewinds the PIN lockout, C_SetPIN and
object deletions by putting back an older copy of the file.  With the TPM anchor
(`[store] anchor`, provider/store/anchor.py; swtpm here) the put-back record is refused
with CKR_DEVICE_ERROR; without it the rewind works - the documented limit (SECURITY.md).

Each test drives the built module from PyKCS11 subprocesses (anchor_client.py) and
attacks the token's SQLite files between them, while no process has them open."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from provider import constants as C
from tests.e2e.conftest import USER_PIN, write_conf

HERE = Path(__file__).resolve().parent
WRONG = "999999"
NEW_PIN = "654321"


class Files:
    """The token's SQLite file and its WAL: an attacker's copy and put-back."""

    def __init__(self, root: Path):
        [self.db] = (root / "tokens").glob("token-*.sqlite")

    def parts(self, base: Path) -> list:
        return [Path(str(base) + s) for s in ("", "-wal", "-shm")]

    def copy(self, to: Path) -> None:
        to.mkdir()
        for p in self.parts(self.db):
            if p.exists():
                shutil.copy2(p, to / p.name)

    def put_back(self, saved: Path) -> None:
        for p in self.parts(self.db):
            p.unlink(missing_ok=True)
        for p in saved.iterdir():
            shutil.copy2(p, self.db.parent / p.name)


def anchored(hsm, swtpm, on: bool) -> None:
    """The hsm's config with max 3 PIN failures, and the TPM anchor if `on`."""
    write_conf(hsm.root, max_failures=3)
    text = hsm.conf.read_text()
    if on:
        text += (f'[backends.tpm]\ntype = "tpm2"\ntcti = "{swtpm.tcti}"\ntimeout = 20.0\n'
                 '[store]\nanchor = "tpm"\n')
    hsm.conf.write_text(text)


def client(hsm, *steps, crash_at=0) -> list:
    """The CK_RV of each step; with crash_at=N the process must die at the N-th increment."""
    proc = hsm.run(sys.executable, HERE / "anchor_client.py", hsm.module, json.dumps(steps), crash_at,
                   check=not crash_at)
    if crash_at:
        assert proc.returncode == 9, proc.stderr.decode()      # it did die in the window
        return []
    return report(proc)["rv"]


def report(proc) -> dict:
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(params=[True, False], ids=["anchor", "no-anchor"])
def setup(request, hsm, swtpm):
    anchored(hsm, swtpm, request.param)
    hsm.init_token()
    return hsm, request.param, Files(hsm.root)


def test_lockout_rewind(setup, tmp_path):
    """Copy the file, lock the PIN with wrong tries, put the copy back: refused with the anchor
    (CKR_DEVICE_ERROR, for the right PIN too); without it the lockout is undone."""
    hsm, on, files = setup
    files.copy(tmp_path / "before")
    assert client(hsm, ["login", WRONG], ["login", WRONG], ["login", WRONG], ["login", USER_PIN]) \
        == [C.CKR_PIN_INCORRECT, C.CKR_PIN_INCORRECT, C.CKR_PIN_INCORRECT, C.CKR_PIN_LOCKED]
    files.put_back(tmp_path / "before")
    assert client(hsm, ["login", USER_PIN]) == [C.CKR_DEVICE_ERROR if on else C.CKR_OK]


def test_set_pin_rewind(setup, tmp_path):
    """C_SetPIN, then the record from before it put back: the old PIN does not come back."""
    hsm, on, files = setup
    files.copy(tmp_path / "before")
    assert client(hsm, ["setpin", USER_PIN, NEW_PIN]) == [C.CKR_OK]
    files.copy(tmp_path / "after")
    files.put_back(tmp_path / "before")
    assert client(hsm, ["login", USER_PIN], ["login", NEW_PIN]) == \
        ([C.CKR_DEVICE_ERROR, C.CKR_DEVICE_ERROR] if on else [C.CKR_OK, C.CKR_PIN_INCORRECT])
    files.put_back(tmp_path / "after")          # the current file back: the owner goes on
    assert client(hsm, ["login", NEW_PIN]) == [C.CKR_OK]


def test_destroyed_object_rewind(setup, tmp_path):
    """An object destroyed, then an older file put back: the token is refused (its objects
    are not listed) instead of the object coming back."""
    hsm, on, files = setup
    assert client(hsm, ["create", "victim", USER_PIN], ["count", "victim"]) == [C.CKR_OK, 1]
    files.copy(tmp_path / "before")
    assert client(hsm, ["destroy", "victim", USER_PIN], ["count", "victim"]) == [C.CKR_OK, 0]
    files.put_back(tmp_path / "before")
    assert client(hsm, ["count", "victim"]) == [C.CKR_DEVICE_ERROR if on else 1]


def test_edited_record_refused(hsm, swtpm):
    """The failure count reset by editing the record in place (no copy needed): the MAC fails."""
    import sqlite3
    anchored(hsm, swtpm, True)
    hsm.init_token()
    assert client(hsm, ["login", WRONG], ["login", WRONG]) == [C.CKR_PIN_INCORRECT] * 2
    db = sqlite3.connect(Files(hsm.root).db)
    db.execute("UPDATE token SET user_fail = 0")
    db.commit()
    db.close()
    assert client(hsm, ["login", USER_PIN]) == [C.CKR_DEVICE_ERROR]


def test_crash_between_increment_and_commit(hsm, swtpm):
    """A process killed after each one of the NV increments of a login + C_SetPIN (the
    tries counted and cleared, the new wrap, its confirmation), before that transaction
    commits: the owner is never locked out - exactly one of the old and the new PIN logs in
    (the new one once the wrap committed), and the next C_SetPIN goes on from there."""
    anchored(hsm, swtpm, True)
    hsm.init_token()
    pins = [USER_PIN, NEW_PIN]
    proc = hsm.run(sys.executable, HERE / "anchor_client.py", hsm.module,
                   json.dumps([["setpin", pins[0], pins[1]], ["setpin", pins[1], pins[0]]]))
    assert report(proc)["rv"] == [C.CKR_OK, C.CKR_OK]
    steps = report(proc)["advances"] // 2              # increments of one login + C_SetPIN
    assert steps >= 3
    for crash_at in range(1, steps + 1):
        client(hsm, ["setpin", pins[0], pins[1]], crash_at=crash_at)
        got = client(hsm, ["login", pins[0]], ["login", pins[1]])
        assert sorted(got) == [C.CKR_OK, C.CKR_PIN_INCORRECT], (crash_at, got)
        if got[1] == C.CKR_OK:
            pins.reverse()
