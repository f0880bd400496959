"""Issue 11 item 13: the SoftHSM2 backend's PIN source.

Attack: another OS user (or any process) that can read the `file:` PIN source logs in to
the SoftHSM2 token with it and uses every key FerroHSM keeps there, without FerroHSM.
Now a PIN file that group/others can read or write, or that another user owns, is
refused when the backend starts: CKR_DEVICE_ERROR inside, one ERROR line in the log
naming the file and the fix (never the PIN); a token whose policy names only that
backend (fallback "none") is absent (C_GetSlotList(TRUE) leaves it out, C_OpenSession
answers CKR_TOKEN_NOT_PRESENT).  Driven through the built module by PyKCS11."""

import json
import os
import sys
import subprocess

import pytest

from provider.config import Config
from provider.library import Library
from tests.backends.engine_env import backend_settings, init_token
from tests.e2e.conftest import clean_env

CLIENT = r"""
import json, sys
import PyKCS11
from PyKCS11 import *
module, label = sys.argv[1:3]
lib = PyKCS11Lib(); lib.load(module)
present = [lib.getTokenInfo(s).label.strip() for s in lib.getSlotList(tokenPresent=True)]
out = {"present": present}
for slot in lib.getSlotList(tokenPresent=False):
    try:
        s = lib.openSession(slot, CKF_SERIAL_SESSION)
        out.setdefault("opened", []).append(lib.getTokenInfo(slot).label.strip())
        s.closeSession()
    except PyKCS11.PyKCS11Error as e:
        out.setdefault("refused", []).append(CKR[e.value])
print(json.dumps(out))
"""


@pytest.fixture
def pin_token(tmp_path, softhsm):
    """A token "p-shsm" served by the SoftHSM2 backend, with its own copy of the PIN file."""
    pin_file = tmp_path / "softhsm.pin"
    pin_file.write_text(softhsm.pin)
    pin_file.chmod(0o600)
    body = backend_settings("softhsm", {"softhsm": softhsm}).replace(str(softhsm.pin_file), str(pin_file))
    log = tmp_path / "ferrohsm.log"
    text = (f'[tokens]\ndirectory = "{tmp_path / "tokens"}"\n[log]\nlevel = "INFO"\nfile = "{log}"\n'
            f'[backends.shsm]\n{body}[token."p-shsm"]\nbackends = ["shsm"]\nfallback = "none"\n')
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(text)
    lib = Library(Config.parse(text, str(conf)))
    init_token(lib, "p-shsm")
    lib.finalize()
    log.write_text("")
    return conf, pin_file, log, softhsm.pin


def _client(module, conf) -> dict:
    proc = subprocess.run([sys.executable, "-c", CLIENT, module, "p-shsm"], env=clean_env(conf),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620], ids=oct)
def test_pin_file_others_can_reach_is_refused(module, pin_token, mode):
    conf, pin_file, log, pin = pin_token
    pin_file.chmod(mode)
    out = _client(module, conf)
    assert "p-shsm" not in out["present"]
    assert "CKR_TOKEN_NOT_PRESENT" in out["refused"]
    text = log.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text                          # said once, not per look
    assert str(pin_file) in errors[0] and f"mode {mode:03o}" in errors[0] and "chmod 600" in errors[0]
    assert pin not in text.replace(str(pin_file), "")      # never the PIN


def test_pin_file_of_another_user_is_refused(module, pin_token):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")   # CI runs as root
    conf, pin_file, log, pin = pin_token
    os.chown(pin_file, 65534, 65534)                       # nobody
    out = _client(module, conf)
    assert "p-shsm" not in out["present"] and "CKR_TOKEN_NOT_PRESENT" in out["refused"]
    assert "owned by uid 65534" in log.read_text()


def test_private_pin_file_serves(module, pin_token):
    conf, pin_file, log, pin = pin_token
    out = _client(module, conf)
    assert "p-shsm" in out["present"] and "p-shsm" in out["opened"]
    assert "CKR_TOKEN_NOT_PRESENT" not in out.get("refused", [])
    assert " ERROR " not in log.read_text()
