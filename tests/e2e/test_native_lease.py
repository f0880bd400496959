"""The native fast path's lease (native/README.md, "The lease"), with two real processes
on one token directory: a holder keeps native state on an AES token key (an armed
message-based encrypt, an armed C_EncryptInit, a cached authorisation), a changer
destroys the key or clears its CKA_ENCRYPT. The holder's process learns that only when
its engine checks the store's head, which the lease makes it do within 500 ms of use:
its calls must fail within DETECT_S of the change. And leases renewed on an unchanged
key must not disturb a long-running operation.

tests/e2e/c/lease_check.c plays both parts; every call it makes is a line
"call WHAT NS RV", NS on CLOCK_MONOTONIC, the clock the changer's "changed NS" uses.
The recheck is a call into Python from the native path: a Python host (python-pkcs11)
makes it from its own thread too."""

import subprocess
import sys
import threading
import time

import pytest

from provider import constants as C

from .conftest import USER_PIN

DETECT_S = 1.0          # the lease (0.5 s) + a tick (0.05 s) + the engine's recheck, with room
OK, KHI, NOT_INIT = C.CKR_OK, C.CKR_KEY_HANDLE_INVALID, C.CKR_OPERATION_NOT_INITIALIZED
NOT_PERMITTED = C.CKR_KEY_FUNCTION_NOT_PERMITTED
RECHECKED = "rechecked for the native fast path's lease"


def debug_env(token, name: str):
    """(environment, log path) for a process of this token logging at DEBUG to its own file."""
    log = token.root / f"{name}.log"
    conf = token.root / f"{name}.conf"
    conf.write_text(token.conf.read_text().replace('level = "ERROR"', f'level = "DEBUG"\nfile = "{log}"'))
    return {**token.env, "FERROHSM_CONF": str(conf)}, log


def calls(lines) -> list[tuple[str, int, int]]:
    """(what, ns, rv) of each "call" line"""
    out = []
    for line in lines:
        if line.startswith("call "):
            _, what, ns, rv = line.split()
            out.append((what, int(ns), int(rv, 16)))
    return out


def checked(report: str, returncode: int, who: str) -> str:
    assert returncode == 0 and "FAIL" not in report, f"{who} rc {returncode}:\n{report}"
    return report


def hold_and_change(c_build, token, role: str, change: str):
    """Run holder `role`; once it is ready (and has held for a while), the changer
    `change` in a second process; then let the holder run on. (calls, ns of the change,
    the holder's debug log)."""
    exe = c_build("lease_check")
    env, log = debug_env(token, "holder")
    holder = subprocess.Popen([str(exe), token.module, "e2e", USER_PIN, role], env=env, cwd=token.root,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(60, holder.kill)
    watchdog.start()
    lines = []
    try:
        while (line := holder.stdout.readline()) and line != "ready\n":
            lines.append(line.rstrip("\n"))
        assert line == "ready\n", "the holder did not get ready:\n" + "\n".join(lines)
        time.sleep(1.0)                        # leases run out and are renewed meanwhile
        proc = token.run(exe, token.module, "e2e", USER_PIN, change, check=False, timeout=60)
        report = checked(proc.stdout.decode() + proc.stderr.decode(), proc.returncode, change)
        changed = int(next(x for x in report.splitlines() if x.startswith("changed ")).split()[1])
        holder.stdin.write("go\n")
        holder.stdin.close()
        lines += holder.stdout.read().splitlines()
        holder.wait(timeout=60)
    finally:
        watchdog.cancel()
        if holder.poll() is None:
            holder.kill()
    checked("\n".join(lines), holder.returncode, role)
    return calls(lines), changed, log.read_text()


def after(found, changed: int, what: str):
    """(seconds after the change, rv) of each `what` call that returned after it"""
    return [((ns - changed) / 1e9, rv) for w, ns, rv in found if w == what and ns > changed]


def assert_held_natively(found, changed: int, log: str, kinds) -> None:
    """Every call before the change succeeded; they were native (each kind handed over,
    the engine asked far less often than calls were made), and leases were renewed."""
    before = [(w, rv) for w, ns, rv in found if ns < changed]
    assert before and all(rv == OK for _, rv in before), before
    for kind in kinds:
        assert f"{kind} handed to the native fast path" in log, kind
    assert log.count(RECHECKED) + log.count("handed to the native fast path") < len(before) / 3, \
        "the calls went to the engine, not the fast path"


@pytest.mark.parametrize("change, init_rv", [("destroy", KHI), ("unencrypt", NOT_PERMITTED)])
def test_armed_operations_end_within_a_second_of_another_process_changing_the_key(c_build, token, change,
                                                                                   init_rv):
    found, changed, log = hold_and_change(c_build, token, "hold", change)
    assert_held_natively(found, changed, log, ("message_encrypt", "encrypt"))
    assert RECHECKED in log                    # the message op's lease was renewed before the change
    messages = after(found, changed, "msg")
    failures = [(t, rv) for t, rv in messages if rv != OK]
    assert [rv for _, rv in failures] == [KHI, NOT_INIT], messages
    assert failures[0][0] <= DETECT_S, f"the armed message op ran {failures[0][0]:.3f} s on a changed key"
    assert all(t <= DETECT_S for t, rv in messages if rv == OK), messages
    # the armed C_EncryptInit of the other session ended with it; a new init is the engine's answer
    assert after(found, changed, "encrypt")[-1][1] == KHI
    (t_init, rv_init), = after(found, changed, "init")
    assert rv_init == init_rv and t_init <= DETECT_S, (t_init, hex(rv_init))
    assert after(found, changed, "msginit")[-1][1] == init_rv


@pytest.mark.parametrize("change, init_rv", [("destroy", KHI), ("unencrypt", NOT_PERMITTED)])
def test_cached_repeat_init_is_refused_within_a_second_of_another_process_changing_the_key(c_build, token,
                                                                                           change, init_rv):
    found, changed, log = hold_and_change(c_build, token, "hold_init", change)
    assert_held_natively(found, changed, log, ("encrypt",))
    inits = after(found, changed, "init")
    assert inits[-1][1] == init_rv and all(rv == OK for _, rv in inits[:-1]), inits
    assert inits[-1][0] <= DETECT_S, f"native repeat inits went on {inits[-1][0]:.3f} s after the change"
    # an init native just before its lease ran out: its C_Encrypt rechecks, and ends
    assert all(rv in (OK, KHI) for _, rv in after(found, changed, "encrypt"))


def test_renewed_leases_keep_long_operations_on_an_unchanged_key(c_build, token):
    """1.5 s of message encrypt/decrypt, repeat GCM inits and raw ECDSA signatures, every
    10 ms: all succeed (the C side checks plaintexts and signatures), the armed message
    operations are rechecked (renewed) by the engine, the repeat inits re-armed by it,
    and the engine is asked only that often."""
    env, log_path = debug_env(token, "renew")
    env["LEASE_TICK_MS"] = "10"
    proc = token.run(c_build("lease_check"), token.module, "e2e", USER_PIN, "renew", env=env, check=False,
                     timeout=120)
    report = checked(proc.stdout.decode() + proc.stderr.decode(), proc.returncode, "renew")
    found, log = calls(report.splitlines()), log_path.read_text()
    assert found and all(rv == OK for _, _, rv in found)
    rounds = int(next(x for x in report.splitlines() if x.startswith("rounds ")).split()[1])
    assert rounds >= 40, rounds
    per_session = {}
    for line in log.splitlines():
        if RECHECKED in line:
            session = line.split("session ")[1].split(":")[0]
            per_session[session] = per_session.get(session, 0) + 1
    # the armed message encrypt (one session) and decrypt (the other) live 1.5 s: renewed by
    # rechecks, about every 0.5 s (a repeat init's op may be rechecked too, rarely)
    assert len(per_session) == 2 and all(2 <= n <= 6 for n in per_session.values()), per_session
    handed = {kind: log.count(f": {kind} handed to the native fast path")
              for kind in ("message_encrypt", "message_decrypt", "encrypt", "sign")}
    # the message ops were armed once; the repeat inits were native within a lease and
    # re-armed by the engine (with its head check) after one ran out
    assert handed["message_encrypt"] == handed["message_decrypt"] == 1, handed
    assert 2 <= handed["encrypt"] <= 5 and 2 <= handed["sign"] <= 5, handed


PYTHON_HOST = """
import time, pkcs11
from pkcs11 import KeyType, Mechanism, MechanismFlag
from pkcs11.mechanisms import GCMParams

lib = pkcs11.lib({module!r})
with lib.get_token(token_label="e2e").open(user_pin={pin!r}, rw=True) as s:
    key = s.generate_key(KeyType.AES, 256, store=False, capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
    params = GCMParams(bytes(12), b"aad", 128)

    def slow():
        yield b"a" * 32
        time.sleep(0.7)                  # the armed op's lease runs out before this Update
        yield b"b" * 32
    for _ in range(2):
        ct = b"".join(key.encrypt(slow(), mechanism=Mechanism.AES_GCM, mechanism_param=params))
    assert key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=params) == b"a" * 32 + b"b" * 32
    print("round trip ok")
"""


def test_recheck_from_a_python_host(token):
    """python-pkcs11 (the module reuses its interpreter): multi-part GCM whose Update
    comes after the lease ran out is rechecked by the engine from within the host's
    thread, and goes on natively."""
    env, log_path = debug_env(token, "pyhost")
    proc = token.run(sys.executable, "-c", PYTHON_HOST.format(module=token.module, pin=USER_PIN), env=env,
                     check=False, timeout=120)
    report = checked(proc.stdout.decode() + proc.stderr.decode(), proc.returncode, "python host")
    assert "round trip ok" in report
    log = log_path.read_text()
    assert "encrypt handed to the native fast path" in log
    assert log.count(RECHECKED) == 2, log
