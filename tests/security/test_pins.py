"""PIN attacks (issue 11, items 8, 14 and the C_InitToken part of 12), through the built
module and through the token files:

- offline guessing from a copied token file costs one Argon2id derivation (64 MiB) a guess,
  not a PBKDF2 one; tokens of older releases are wrapped again with Argon2id at login;
- a process killed during its correct-PIN C_Login (more often than the failure limit) does
  not lock the PIN, while wrong PINs killed before their answer still count and lock;
- the exact lockout under a race of processes with wrong PINs;
- failed C_InitToken calls wait longer and longer, and the owner of the token files can
  unlock a locked SO PIN with `ferrohsm unlock-pin` (and only with the PIN).
"""

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provider import constants as C
from provider.store.sqlite import SqliteStore
from tests.e2e.conftest import SO_PIN, USER_PIN, write_conf

CLIENT = Path(__file__).resolve().parent / "pin_client.py"
V1 = Path(__file__).resolve().parents[1] / "data" / "store" / "v1"
MAX = 10                                   # [pin] max_failures default


def client(hsm, action: str, pin: str, *opts, check=False) -> subprocess.CompletedProcess:
    return hsm.run(sys.executable, CLIENT, hsm.module, action, pin, *opts, check=check)


def rv_of(proc) -> int:
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("rv ")]
    assert lines, (proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    return int(lines[-1].split()[1])


def token_file(hsm) -> Path:
    (path,) = (hsm.root / "tokens").glob("token-*.sqlite")
    return path


def record(hsm) -> dict:
    with sqlite3.connect(token_file(hsm)) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM token").fetchone())


def lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def opens(kek: bytes, tok: dict, who: str) -> bool:
    wrap = tok[f"{who}_wrap"]
    try:
        AESGCM(kek).decrypt(wrap[:12], wrap[12:], lp(tok["serial"].encode(), who.encode()))
        return True
    except InvalidTag:
        return False


def argon2_params(text: str) -> dict:
    assert text.startswith("argon2id$v=19$"), text
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split("$")[2].split(","))}


# --- offline guessing (item 8) --------------------------------------------------------
def test_offline_guess_from_a_copied_file_costs_argon2id(token, tmp_path):
    """From a copy of the token file, one guess of either PIN costs an Argon2id derivation
    of at least 64 MiB: the parameters are in the file, they are what opens the wrap, and
    PBKDF2 of the right PIN (what the previous release used) does not open it."""
    copy = tmp_path / "stolen.sqlite"
    shutil.copy(token_file(token), copy)
    with sqlite3.connect(copy) as db:
        db.row_factory = sqlite3.Row
        tok = dict(db.execute("SELECT * FROM token").fetchone())
    for who, pin in (("so", SO_PIN), ("user", USER_PIN)):
        params = argon2_params(tok[f"{who}_kdf"])
        assert params["m"] >= 65536 and params["t"] >= 1, params
        assert tok[f"{who}_iters"] is None
        salt = tok[f"{who}_salt"]
        kek = hash_secret_raw(pin.encode(), salt, params["t"], params["m"], params["p"], 32, Type.ID)
        assert opens(kek, tok, who)                                           # the right guess, at full cost
        assert not opens(hash_secret_raw(pin.encode(), salt, 1, 8 * params["p"], params["p"], 32, Type.ID),
                         tok, who)                                            # no cheaper Argon2id opens it
        assert not opens(hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, 600_000, 32), tok, who)
        assert not opens(hash_secret_raw(b"654321", salt, params["t"], params["m"], params["p"], 32, Type.ID),
                         tok, who)


def test_first_release_token_is_wrapped_with_argon2id_at_login(hsm):
    """The committed token of the first release (PBKDF2 wraps) logs in through the C ABI,
    and after each PIN's login its record shows Argon2id; the PINs still work."""
    tokens = hsm.root / "tokens"
    tokens.mkdir(mode=0o700)
    shutil.copy(V1 / "token-v1.sqlite", tokens / "token-00000000000000000001-v1.sqlite")
    assert record(hsm)["user_iters"] == 600_000 and "user_kdf" not in record(hsm)      # PBKDF2, schema 1
    assert rv_of(client(hsm, "login", "user-pin-v1")) == C.CKR_OK
    tok = record(hsm)
    assert argon2_params(tok["user_kdf"])["m"] >= 65536 and tok["so_kdf"] is None   # the SO's: at its login
    assert rv_of(client(hsm, "login-so", "so-pin-v1")) == C.CKR_OK
    tok = record(hsm)
    assert argon2_params(tok["so_kdf"])["m"] >= 65536 and tok["so_iters"] is None
    assert rv_of(client(hsm, "login", "user-pin-v1")) == C.CKR_OK
    assert rv_of(client(hsm, "login", "wrong-pin-v1")) == C.CKR_PIN_INCORRECT


def test_token_of_the_previous_release_is_wrapped_with_argon2id_at_login(token):
    """A token as the previous release (schema 2) made it: PBKDF2-HMAC-SHA256, 600,000
    iterations, no KDF parameters. The user's login wraps it again with Argon2id."""
    path = token_file(token)
    tok = record(token)
    store = SqliteStore(str(path))                 # (set-up: the master key, from the engine in-process)
    store.login(C.CKU_SO, SO_PIN.encode())
    master = store._master
    store.close()
    salt = bytes(range(16))
    kek = hashlib.pbkdf2_hmac("sha256", USER_PIN.encode(), salt, 600_000, 32)
    nonce = bytes(12)
    wrap = nonce + AESGCM(kek).encrypt(nonce, master, lp(tok["serial"].encode(), b"user"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE token SET user_salt = ?, user_iters = 600000, user_kdf = NULL, user_wrap = ?",
                   (salt, wrap))
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_OK
    tok = record(token)
    assert argon2_params(tok["user_kdf"])["m"] >= 65536 and tok["user_wrap"] != wrap
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_OK


# --- killed logins (item 14) --------------------------------------------------------------
def test_killed_correct_logins_do_not_lock_the_pin(token):
    """A crash-looping service: its process is SIGKILLed inside C_Login with the right PIN,
    right after the try was committed and before the answer, more times than the limit.
    Its next login succeeds (before: the 10th kill locked the user PIN)."""
    for n in range(MAX + 2):
        proc = client(token, "login", USER_PIN, "--die-after-count")
        assert proc.returncode == -signal.SIGKILL, (n, proc.stdout, proc.stderr)
    assert record(token)["user_fail"] <= 1
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_OK
    assert record(token)["user_fail"] == 0


def test_logins_killed_at_any_moment_do_not_lock_the_pin(token):
    """The same, killed from outside at moments spread over the login (the KDF, the
    writes, the unwrap)."""
    for n in range(MAX + 2):
        proc = subprocess.Popen([sys.executable, str(CLIENT), token.module, "login", USER_PIN, "--wait"],
                                env=token.env, cwd=token.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(0.02 * n)                      # (not an assert: where the kill lands)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_OK


def test_kill_to_guess_still_counts_and_locks(token):
    """Wrong PINs, each process killed before it computed its answer: every guess counts,
    and at the limit the right PIN is refused with CKR_PIN_LOCKED."""
    write_conf(token.root, failure_delay=0)         # (no waits after failures: a fast test)
    for n in range(MAX):
        proc = client(token, "login", f"{n:06d}-guess", "--die-after-count")
        assert proc.returncode == -signal.SIGKILL
    assert record(token)["user_fail"] == MAX
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_PIN_LOCKED


def test_wrong_pins_racing_in_many_processes_lock_exactly(token):
    """14 processes try 14 different wrong PINs at once: exactly 10 hear CKR_PIN_INCORRECT,
    the others CKR_PIN_LOCKED, and the right PIN is locked out."""
    write_conf(token.root, failure_delay=0)
    procs = [subprocess.Popen([sys.executable, str(CLIENT), token.module, "login", f"{n:06d}-race", "--wait"],
                              env=token.env, cwd=token.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for n in range(14)]
    for p in procs:
        assert p.stdout.readline().strip() == b"ready"
    for p in procs:
        p.stdin.write(b"go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append(int(out.decode().split("rv ")[-1]))
    assert sorted(results) == [C.CKR_PIN_INCORRECT] * MAX + [C.CKR_PIN_LOCKED] * 4, results
    assert rv_of(client(token, "login", USER_PIN)) == C.CKR_PIN_LOCKED


# --- C_InitToken and the SO lock (item 12) -----------------------------------------------------
def test_failed_init_token_calls_wait_longer_each_time(token):
    """Each wrong C_InitToken waits before its check: 0.5 s after one failure, doubling,
    at most 8 s (the waits the engine asked for are recorded, not timed)."""
    waits = []
    for n in range(6):
        proc = client(token, "init-token", "87654321", "--sleeps")
        assert rv_of(proc) == C.CKR_PIN_INCORRECT
        waits += json.loads(proc.stdout.decode().split("sleeps ")[1].splitlines()[0])
    assert waits == [0, 0.5, 1, 2, 4, 8]


def test_locked_so_pin_is_recovered_by_the_owner_with_the_pin(hsm):
    """Wrong C_InitToken calls (no session needed) lock the SO PIN; `ferrohsm unlock-pin
    --so` run by the owner of the token files with a wrong PIN does not unlock it, with
    the right one it does, and C_InitToken works again."""
    write_conf(hsm.root, failure_delay=0, max_failures=3)
    hsm.init_token()
    for _ in range(3):
        assert rv_of(client(hsm, "init-token", "87654321")) == C.CKR_PIN_INCORRECT
    assert rv_of(client(hsm, "init-token", SO_PIN)) == C.CKR_PIN_LOCKED
    cli = Path(sys.executable).parent / "ferrohsm"
    wrong = hsm.run(cli, "unlock-pin", "--token", "e2e", "--so", "--pin", "87654321", check=False)
    assert wrong.returncode != 0 and b"CKR_PIN_INCORRECT" in wrong.stdout, wrong.stdout
    assert rv_of(client(hsm, "init-token", SO_PIN)) == C.CKR_PIN_LOCKED
    right = hsm.run(cli, "unlock-pin", "--token", "e2e", "--so", "--pin", SO_PIN)
    assert b"unlocked" in right.stdout
    assert rv_of(client(hsm, "init-token", SO_PIN)) == C.CKR_OK


def test_locked_user_pin_is_recovered_by_the_owner_with_the_pin(hsm):
    """The same for the user PIN (which the SO can also replace with C_InitPIN)."""
    write_conf(hsm.root, failure_delay=0, max_failures=3)
    hsm.init_token()
    for n in range(3):
        assert rv_of(client(hsm, "login", f"{n:06d}-wrong")) == C.CKR_PIN_INCORRECT
    assert rv_of(client(hsm, "login", USER_PIN)) == C.CKR_PIN_LOCKED
    cli = Path(sys.executable).parent / "ferrohsm"
    hsm.run(cli, "unlock-pin", "--token", "e2e", "--pin", USER_PIN)
    assert rv_of(client(hsm, "login", USER_PIN)) == C.CKR_OK
