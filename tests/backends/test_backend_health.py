"""Backend health (issue 12): each configured backend checked as available / degraded /
unavailable (again every interval, in a thread), and a device sign slower than 500 ms
counted per backend and logged. The peer is a real swtpm, paused with SIGSTOP."""

import os
import signal
import threading
import time

from provider import constants as C
from provider.library import Library
from provider.mechanisms.params import Mechanism

from .engine_env import PIN, Env, backend_settings, init_token, write_config


def _env(tmp_path, swtpm, name="tpm") -> Env:
    lib = Library(write_config(tmp_path, {name: backend_settings("tpm2", {"swtpm": swtpm}),
                                          "gone": 'type = "tpm2"\ntcti = "swtpm:host=127.0.0.1,port=1"\n'
                                                  'timeout = 1.0\n'},
                               ([name], "none"), "health"))
    slot = init_token(lib, "health")
    s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
    lib.login(s, C.CKU_USER, PIN)
    return Env(lib, slot, s, name)


def test_health_report_and_the_periodic_check(tmp_path, swtpm):
    env = _env(tmp_path, swtpm)
    try:
        backends = env.lib.backends
        report = backends.health_report()
        assert report["tpm"]["status"] == "available" and report["tpm"]["kind"] == "hardware"
        assert report["soft"]["status"] == "available"
        assert report["gone"]["status"] == "unavailable" and report["gone"]["reason"]
        first = report["tpm"]["checked_at"]
        backends.start_health_checks(interval=0.2)
        deadline = time.monotonic() + 10
        while backends.health_report()["tpm"]["checked_at"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backends.health_report()["tpm"]["checked_at"] > first         # checked again
    finally:
        env.lib.finalize()                                                 # stops the checker


def test_a_slow_sign_is_counted_and_logged(tmp_path, swtpm):
    env = _env(tmp_path, swtpm)
    try:
        pub, priv = env.keypair("ec-p256", label="slow")
        mech = Mechanism(C.CKM_ECDSA)
        env.lib.sign_init(env.session, mech, priv)
        env.lib.sign(env.session, bytes(32), 1 << 10)
        assert env.lib.backends.health_report()["tpm"]["slow_signs"] == 0
        os.kill(swtpm.pid, signal.SIGSTOP)
        resume = threading.Timer(0.8, os.kill, (swtpm.pid, signal.SIGCONT))
        resume.start()
        try:
            env.lib.sign_init(env.session, mech, priv)
            assert len(env.lib.sign(env.session, bytes(32), 1 << 10)) == 64
        finally:
            resume.join()
            os.kill(swtpm.pid, signal.SIGCONT)
        assert env.lib.backends.health_report()["tpm"]["slow_signs"] == 1
        assert "a sign took" in (tmp_path / "ferrohsm.log").read_text()
    finally:
        env.lib.finalize()
