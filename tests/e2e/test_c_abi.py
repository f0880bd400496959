"""The module's C ABI from a C program that dlopen()s it RTLD_LOCAL, run with an
empty environment except FERROHSM_CONF (env -i): no PYTHONPATH, no venv."""

import subprocess


def test_abi_from_c(c_build, module, tmp_path):
    from .conftest import write_conf
    exe = c_build("abi_check")
    conf = write_conf(tmp_path)
    proc = subprocess.run(["env", "-i", f"FERROHSM_CONF={conf}", str(exe), module],
                          capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert "FAIL" not in report, report
    assert proc.returncode == 0, report
    assert "0 failures" in proc.stdout


def test_boundary_rules_from_c(c_build, token):
    from .conftest import USER_PIN
    exe = c_build("ops_check")
    proc = token.run("env", "-i", f"FERROHSM_CONF={token.conf}", exe, token.module, "e2e", USER_PIN, check=False)
    report = proc.stdout.decode() + proc.stderr.decode()
    assert "FAIL" not in report, report
    assert proc.returncode == 0, report
