"""Governed keys on the native fast path (issue 12): each *Init on a governed key is
the gate's audit record; the operations native code then runs are counted in C and
recorded by the engine ("CKM_AES_GCM: N native uses", action pkcs11.encrypt / .decrypt)
when the context ends (session closed, C_Finalize) and at least once a second while it
lives. A key that is not governed writes no records. A governance change in another
process stops the native path within the lease; so does a count that cannot be recorded
(fail closed).

tests/e2e/c/uses_check.c is the client (a C host: the module starts its own Python);
the governance API runs in this test's process, on the same token directory, and the
records are read back with `ferrohsm audit export`. (tests/e2e/test_governed_pkcs11.py
counts the uses of a Python host, PyKCS11.)"""

import subprocess
import threading
import time
from datetime import datetime

import pytest

from provider import constants as C
from tests.e2e.conftest import USER_PIN
from tests.e2e.test_governed_pkcs11 import ALICE, _governance, _records

COUNTED = " native uses"
DETECT_S = 1.0          # the lease (0.5 s) + a tick + the engine's recheck, with room (test_native_lease.py)


def _counts(records, action="pkcs11.encrypt") -> list[int]:
    """The counts of the fast path's records of `action`, in order."""
    out = []
    for r in records:
        if r["message"].endswith(COUNTED) and r["action"] == action:
            assert r["outcome"] == "ok" and r["key_version"] >= 1 and r["actor"].startswith("pkcs11:"), r
            out.append(int(r["message"][:-len(COUNTED)].split(": ")[1]))
    return out


def _inits(records, action="pkcs11.encrypt") -> int:
    return sum(1 for r in records if r["action"] == action and not r["message"].endswith(COUNTED))


def _governed_key(token, name="data"):
    lib, gov = _governance(token)
    try:
        gov.create_key(ALICE, name, "aes-256-gcm", ["encrypt", "decrypt"])
    finally:
        lib.finalize()


class Client:
    """uses_check running, its stdout read line by line."""

    def __init__(self, c_build, token, role: str, key: str, n: int):
        self.proc = subprocess.Popen([str(c_build("uses_check")), token.module, "e2e", USER_PIN, role, key, str(n)],
                                     env=token.env, cwd=token.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.watchdog = threading.Timer(90, self.proc.kill)
        self.watchdog.start()
        self.lines = []

    def until(self, prefix: str) -> str:
        while line := self.proc.stdout.readline():
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        raise AssertionError(f"no {prefix!r} from the client:\n" + "\n".join(self.lines))

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> list[str]:
        self.proc.stdin.close()
        self.lines += self.proc.stdout.read().splitlines()
        self.proc.wait(timeout=60)
        self.watchdog.cancel()
        report = "\n".join(self.lines)
        assert self.proc.returncode == 0 and "FAIL" not in report and "finalized" in report, report
        return self.lines


# single_close: more inits than C's pending table has rows (FERRO_PENDING) within a flush:
# the grant of a session's repeated init is one row, whose counts go on
@pytest.mark.parametrize("role, n", [("messages_close", 2000), ("messages_finalize", 2000), ("single_close", 2500)])
def test_native_uses_of_a_governed_key_are_recorded_and_sum_to_what_ran(c_build, token, role, n):
    _governed_key(token)
    started = time.monotonic()
    client = Client(c_build, token, role, "data", n)
    try:
        assert client.until("done ") == f"done {n}"
        if role.endswith("_close"):                  # the session closed: its counts are recorded already
            records = _records(token)
            assert sum(_counts(records)) == n
            client.go()                              # (messages_finalize waits for none: it may have exited)
    finally:
        client.finish()
    records = _records(token)
    counts = _counts(records)
    assert sum(counts) == n, counts
    # message encryption: one init, its messages native; C_EncryptInit: each init the gate's record
    assert _inits(records) == (n if role == "single_close" else 1)
    # counted in C, recorded per flush (at the end, and twice a second), not per use
    assert 1 <= len(counts) <= 3 + 2 * (time.monotonic() - started), counts
    verified = token.run(_ferrohsm(), "audit", "verify", "--file", str(token.root / "log.jsonl"), check=False)
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()


def test_a_long_lived_context_is_recorded_at_least_once_a_second(c_build, token):
    _governed_key(token)
    client = Client(c_build, token, "hold", "data", 3000)      # 3 s of messages, one every ms
    try:
        held = int(client.until("held ").split()[1])
        time.sleep(1.2)                                        # idle: what it ran is recorded anyway
        records = _records(token)
        client.go()
    finally:
        client.finish()
    counts = _counts(records)
    assert held > 300 and sum(counts) == held, (held, counts)  # all recorded while the context lives
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
             for r in records if r["message"].endswith(COUNTED)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 3 and max(gaps) <= 1.1, gaps
    assert sum(_counts(_records(token))) == held               # C_Finalize: nothing more


def test_an_ungoverned_key_writes_no_count_records(c_build, token):
    _governed_key(token)                          # the token has an audit log
    client = Client(c_build, token, "messages_close", "-", 500)
    try:
        assert client.until("done ") == "done 500"
        client.go()
    finally:
        client.finish()
    records = _records(token)
    assert not [r for r in records if r["action"].startswith("pkcs11.")], records


def test_revoking_the_version_in_another_process_stops_native_use_within_the_lease(c_build, token):
    _governed_key(token)
    lib, gov = _governance(token)
    client = Client(c_build, token, "decrypt_hold", "data", 0)
    try:
        client.until("encrypted")
        gov.rotate(ALICE, "data")               # v2 the primary: v1 decrypts only
        client.go()
        client.until("ready")
        time.sleep(1.2)                         # leases of the armed decrypt run out and are renewed
        gov.revoke(ALICE, "data", 1, "superseded")
        changed = time.monotonic_ns()
        client.go()
    finally:
        try:
            client.finish()
        finally:
            lib.finalize()
    calls = [(w, int(ns), int(rv, 16)) for _, w, ns, rv in (ln.split() for ln in client.lines
                                                           if ln.startswith("call "))]
    before = [rv for w, ns, rv in calls if w == "msg" and ns < changed]
    assert len(before) > 100 and set(before) == {C.CKR_OK}, before[:5]
    after = [((ns - changed) / 1e9, rv) for w, ns, rv in calls if w == "msg" and ns > changed]
    failures = [(t, rv) for t, rv in after if rv != C.CKR_OK]
    assert [rv for _, rv in failures] == [C.CKR_KEY_HANDLE_INVALID, C.CKR_OPERATION_NOT_INITIALIZED], after
    assert failures[0][0] <= DETECT_S, f"decrypted natively {failures[0][0]:.3f} s after the revocation"
    (init,) = [rv for w, _, rv in calls if w == "init"]
    assert init == C.CKR_KEY_FUNCTION_NOT_PERMITTED          # the gate: a revoked version
    records = _records(token)
    assert _counts(records) == [1]                             # the message encrypted first
    decrypted = sum(_counts(records, "pkcs11.decrypt"))
    assert decrypted == len(before) + sum(1 for _, rv in after if rv == C.CKR_OK)
    # the two C_MessageDecryptInit: the gate's records, the second refused
    assert [r["outcome"] for r in records if r["action"] == "pkcs11.decrypt"
            and not r["message"].endswith(COUNTED)] == ["ok", "denied"]


def test_uses_that_cannot_be_recorded_stop_the_native_path(c_build, token):
    """The audit's JSON-lines file cannot grow any more (the holder's RLIMIT_FSIZE): the
    next count's record fails, the key's native state is dropped (CKR_FUNCTION_FAILED),
    and a new init is refused by the gate, whose record fails too."""
    _governed_key(token)
    with token.conf.open("a") as conf:
        conf.write(f'[audit]\nfile = "{token.root / "audit.jsonl"}"\n')
    client = Client(c_build, token, "audit_full", "data", 100)
    try:
        limited = int(client.until("limited ").split()[1])
    finally:
        client.finish()
    calls = [(w, int(ns), int(rv, 16)) for _, w, ns, rv in (ln.split() for ln in client.lines
                                                           if ln.startswith("call "))]
    messages = [((ns - limited) / 1e9, rv) for w, ns, rv in calls if w == "msg"]
    failures = [(t, rv) for t, rv in messages if rv != C.CKR_OK]
    assert [rv for _, rv in failures] == [C.CKR_FUNCTION_FAILED, C.CKR_OPERATION_NOT_INITIALIZED], messages
    assert failures[0][0] <= DETECT_S, f"ran natively {failures[0][0]:.3f} s with its counts unrecorded"
    (init,) = [rv for w, _, rv in calls if w == "init"]
    assert init == C.CKR_FUNCTION_FAILED
    records = _records(token)          # the store has what was written before the limit
    assert _inits(records) == 1 and sum(_counts(records)) <= 100


def _ferrohsm() -> str:
    from tests.e2e.test_governed_pkcs11 import _ferrohsm as path
    return path()
