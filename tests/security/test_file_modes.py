"""Issue 12 (file permissions): every file FerroHSM writes is 0600, every directory it
makes 0700, under the usual umask 022 of the program that loads it (which the module
does not change); a configuration file or token directory that group/others can write
is warned about once.

Attack: another OS user reads a token file (the sealed store, its -wal, a side file)
or the log, and attacks it offline; or swaps the config / plants files in a token
directory others can write.  Before, the log file was created 0644 and the token
directory's parents 0755; now nothing FerroHSM writes is readable by anyone else, and a
config or token directory others can write is named in one WARNING.  Driven through the
built module by pkcs11-tool (C host), the store's files then checked on disk."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import SO_PIN, USER_PIN, clean_env


def _umask022():
    os.umask(0o022)


def _conf(root: Path, kind: str) -> Path:
    conf = root / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{root / "data" / "ferro" / "tokens"}"\n'
                    f'[store]\nkind = "{kind}"\n'
                    f'[log]\nlevel = "INFO"\nfile = "{root / "logs" / "ferrohsm.log"}"\n')
    conf.chmod(0o600)
    (root / "logs").mkdir(mode=0o700, exist_ok=True)   # the log's directory is the operator's
    return conf


def _tool(module, conf, *args):
    proc = subprocess.run(["pkcs11-tool", "--module", module, *args], env=clean_env(conf),
                          capture_output=True, timeout=120, preexec_fn=_umask022)
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return proc


def _modes(top: Path) -> dict:
    """path -> st_mode of `top` and everything under it."""
    out = {top: top.lstat().st_mode}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[p] = p.lstat().st_mode
    return out


OPEN_LOOK = r"""
import json, os, sys
import PyKCS11
from PyKCS11 import *
module, top = sys.argv[1:3]
lib = PyKCS11Lib(); lib.load(module)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login("%s")
s.createObject([(CKA_CLASS, CKO_DATA), (CKA_TOKEN, True), (CKA_PRIVATE, True),
                (CKA_LABEL, "d"), (CKA_VALUE, b"private data")])
out = {}
for dirpath, dirnames, filenames in os.walk(top):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        out[p] = os.lstat(p).st_mode
print(json.dumps(out))
s.logout(); s.closeSession()
""" % USER_PIN


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_every_file_is_0600_every_directory_0700(module, tmp_path, kind):
    conf = _conf(tmp_path, kind)
    _tool(module, conf, "--init-token", "--slot", "0", "--label", "modes", "--so-pin", SO_PIN)
    _tool(module, conf, "--token-label", "modes", "--login", "--login-type", "so", "--so-pin", SO_PIN,
          "--init-pin", "--pin", USER_PIN)
    user = ("--token-label", "modes", "--login", "--pin", USER_PIN)
    _tool(module, conf, *user, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "01", "--label", "ec")
    _tool(module, conf, *user, "--keygen", "--key-type", "AES:32", "--id", "02", "--label", "aes")
    # a Python host (PyKCS11) writes while it looks: SQLite's -wal and -shm exist only then
    proc = subprocess.run([sys.executable, "-c", OPEN_LOOK, module, str(tmp_path / "data")],
                          env=clean_env(conf), capture_output=True, timeout=120, preexec_fn=_umask022)
    assert proc.returncode == 0, proc.stderr.decode()
    while_open = {Path(p): m for p, m in json.loads(proc.stdout.decode().splitlines()[-1]).items()}
    modes = {**while_open, **_modes(tmp_path / "data"), **_modes(tmp_path / "logs")}
    files = {p: m for p, m in modes.items() if not stat.S_ISDIR(m)}
    dirs = {p: m for p, m in modes.items() if stat.S_ISDIR(m)}
    assert (tmp_path / "logs" / "ferrohsm.log") in files
    if kind == "sqlite":
        assert {p.name[-4:] for p in while_open} >= {"-wal", "-shm"}, while_open
    assert len(files) >= 3, files
    assert {str(p): oct(stat.S_IMODE(m)) for p, m in files.items() if stat.S_IMODE(m) != 0o600} == {}
    assert {str(p): oct(stat.S_IMODE(m)) for p, m in dirs.items() if stat.S_IMODE(m) != 0o700} == {}


def test_shared_config_and_token_dir_are_warned_about_once(module, tmp_path):
    conf = _conf(tmp_path, "sqlite")
    _tool(module, conf, "--init-token", "--slot", "0", "--label", "modes", "--so-pin", SO_PIN)
    log = tmp_path / "logs" / "ferrohsm.log"
    log.write_text("")
    conf.chmod(0o666)
    (tmp_path / "data" / "ferro" / "tokens").chmod(0o777)
    _tool(module, conf, "--list-slots")
    warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
    conf_lines = [w for w in warnings if f"configuration file {conf} is writable by group and others" in w]
    dir_lines = [w for w in warnings if "token directory" in w and "writable by group and others" in w]
    assert len(conf_lines) == 1 and len(dir_lines) == 1, warnings
    conf.chmod(0o600)
    (tmp_path / "data" / "ferro" / "tokens").chmod(0o700)
    log.write_text("")
    _tool(module, conf, "--list-slots")
    assert "writable by" not in log.read_text()


def test_a_log_file_an_older_release_left_0644_is_narrowed(module, tmp_path):
    conf = _conf(tmp_path, "sqlite")
    log = tmp_path / "logs" / "ferrohsm.log"
    log.write_text("an older release's lines\n")
    log.chmod(0o644)
    _tool(module, conf, "--list-slots")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.read_text().startswith("an older release's lines\n")     # appended to, not replaced
