"""A C host (pkcs11-tool) run by an unprivileged user works (issue 9, robustness 5):
the embedded interpreter's home must be readable by every user, which it is when
scripts/setup.sh builds .venv from /usr/bin/python3. The tests run as root in CI;
the user is created once (useradd) and gets a private token directory and config."""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import write_conf

USER = "ferrohsm-e2e"


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def user_home():
    if os.geteuid() != 0:
        pytest.fail("this test creates a user and runs as it: run it as root (CI does)")
    u = _user()
    home = Path(tempfile.mkdtemp(prefix="ferrohsm-user-"))
    write_conf(home)
    for p in [home, *home.rglob("*")]:
        os.chown(p, u.pw_uid, u.pw_gid)
    os.chmod(home, 0o700)
    yield home
    shutil.rmtree(home)


def _as_user(home: Path, module: str, *args: str) -> str:
    env = ["env", "-i", f"HOME={home}", f"FERROHSM_CONF={home / 'ferrohsm.conf'}", "PATH=/usr/bin:/bin"]
    r = subprocess.run(["runuser", "-u", USER, "--", *env, "pkcs11-tool", "--module", module, *args],
                       capture_output=True, text=True, timeout=120, input="hello\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CKR_GENERAL_ERROR" not in r.stdout + r.stderr
    return r.stdout + r.stderr


def test_unprivileged_user_runs_a_c_host(module, user_home):
    assert "Slot 0" in _as_user(user_home, module, "--list-slots")
    _as_user(user_home, module, "--init-token", "--label", "user", "--so-pin", "12345678")
    _as_user(user_home, module, "--login", "--login-type", "so", "--so-pin", "12345678",
             "--init-pin", "--pin", "123456")
    _as_user(user_home, module, "--login", "--pin", "123456", "--keypairgen", "--key-type", "EC:prime256v1",
             "--id", "01", "--label", "k")
    data = user_home / "data"
    data.write_bytes(b"signed by an unprivileged user")
    os.chown(data, pwd.getpwnam(USER).pw_uid, -1)
    out = user_home / "sig"
    _as_user(user_home, module, "--login", "--pin", "123456", "--sign", "--mechanism", "ECDSA-SHA256",
             "--id", "01", "--input-file", str(data), "--output-file", str(out))
    assert out.stat().st_size > 0
