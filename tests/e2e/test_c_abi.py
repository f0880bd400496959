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


def test_fork_from_a_thread_that_never_called_the_module(c_build, module, tmp_path):
    """Issue 9, robustness 2: a child forked by a thread with no Python thread
    state initialises and uses the module (30 of 30); it used to abort."""
    from .conftest import write_conf
    exe = c_build("fork_thread_check")
    conf = write_conf(tmp_path)
    proc = subprocess.run(["env", "-i", f"FERROHSM_CONF={conf}", str(exe), module],
                          capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert "children ok: 30 of 30" in proc.stdout, report
    assert "FAIL" not in report and proc.returncode == 0, report
