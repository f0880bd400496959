"""The root conftest.py turns a skip into a failure under CI=true unless the test is a
documented peer limit (PEER_LIMITS): checked on a child pytest that loads it as a plugin."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = '''
import pytest
def test_tool_missing():
    pytest.skip("some-tool is not installed")
'''


def _child(tmp_path: Path, ci: str | None):
    (tmp_path / "test_child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_skip_for_a_missing_tool_fails_under_ci(tmp_path, ci):
    got = _child(tmp_path, ci)
    assert got.returncode == 1 and "1 failed" in got.stdout, got.stdout
    assert "not a documented peer limit" in got.stdout and "some-tool" in got.stdout


def test_skip_stays_a_skip_outside_ci(tmp_path):
    got = _child(tmp_path, None)
    assert got.returncode == 0 and "1 skipped" in got.stdout, got.stdout


def test_peer_limits_name_their_reason():
    import conftest
    assert conftest.PEER_LIMITS and all(
        "::" in k and v.strip() for k, v in conftest.PEER_LIMITS.items())
    assert conftest.peer_limit("conformance/test_pkcs11_tool.py::test_threads[ferrohsm]")
    assert conftest.peer_limit("conformance/test_pkcs11_tool.py::test_threads[other]") is None
