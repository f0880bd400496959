"""The token file as the issue describes it: shared live by two processes at
once, and refusing records altered on disk."""

import sqlite3
import subprocess
import sys

from .conftest import USER_PIN

WATCHER = f"""
import sys, time, pkcs11
from pkcs11 import Attribute
tok = pkcs11.lib(sys.argv[1]).get_token(token_label="e2e")
with tok.open(user_pin="{USER_PIN}") as s:
    print("ready", flush=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        found = list(s.get_objects({{Attribute.LABEL: "from-other"}}))
        if found:
            print("found", len(found), flush=True)
            break
        time.sleep(0.2)
    else:
        print("not found", flush=True)
"""


def test_a_live_session_sees_a_key_another_process_creates(token):
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, token.module], env=token.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr.read()
        token.user("--keygen", "--key-type", "AES:16", "--id", "31", "--label", "from-other")
        assert watcher.stdout.readline().strip() == "found 1"
    finally:
        watcher.kill()
        watcher.wait(timeout=10)


def _tamper(token, flip_at) -> None:
    """Flip one byte of every object record in the token's database file."""
    (db,) = (token.root / "tokens").glob("token-*.sqlite")
    with sqlite3.connect(db) as conn:
        for uid, record in conn.execute("SELECT uid, record FROM objects").fetchall():
            damaged = bytearray(record)
            damaged[flip_at(len(damaged))] ^= 0x01
            conn.execute("UPDATE objects SET record = ? WHERE uid = ?", (bytes(damaged), uid))


def test_a_tampered_record_is_refused_cleanly(token):
    token.user("--keygen", "--key-type", "AES:32", "--id", "32", "--label", "victim")
    (token.root / "pt").write_bytes(b"0123456789abcdef")
    enc = ("--encrypt", "--id", "32", "-m", "AES-CBC", "--iv", "00" * 16, "-i", "pt", "-o", "ct")
    token.user(*enc)
    _tamper(token, lambda n: n - 5)                 # inside the sealed key value at the end
    listing = token.user("--list-objects", "--type", "secrkey")
    assert b"victim" not in listing.stdout           # not served
    proc = token.user(*enc, check=False)
    assert proc.returncode > 0                       # a clean error, not a signal
    assert b"victim" not in proc.stdout
