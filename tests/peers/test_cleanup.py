"""No peer process outlives a test run: a child pytest uses the real peer fixtures (swtpm,
pcscd + vpcd bridge + card, SoftHSM2, PostgreSQL) in tests that fail, time out, or get SIGTERM (an
outer timeout or a cancelled CI job), and afterwards no process may remain whose command
line names a path under the child's base temp dir (where every peer keeps its state, but
PostgreSQL, which keeps it under /tmp for its own user), and none of the recorded pids."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = "from tests.peers.fixtures import pcsc, postgres, softhsm, swtpm  # noqa: F401\n"
USES_PEERS = '''
import os, signal, time
from pathlib import Path

def record(swtpm, pcsc, softhsm, postgres):
    pids = [swtpm.pid, pcsc.bridge_pid(), int((pcsc.dir / "pcscd.pid").read_text()), postgres.pid]
    for p in pids:
        os.kill(p, 0)                       # alive while the test runs
    Path(os.environ["PEER_PIDS"]).write_text(" ".join(map(str, pids)))
'''
FAILS_AND_HANGS = USES_PEERS + '''
def test_fails(swtpm, pcsc, softhsm, postgres):
    record(swtpm, pcsc, softhsm, postgres)
    assert False, "a failing test"

def test_times_out(swtpm, pcsc):
    time.sleep(60)
'''
TERMINATED = USES_PEERS + '''
def test_terminated(swtpm, pcsc, softhsm, postgres):
    record(swtpm, pcsc, softhsm, postgres)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
'''


def leftovers(base: Path) -> list:
    """Command lines of live processes that name a path under `base`."""
    mark, found = f"{base}/", []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def _run_child(tmp_path: Path, body: str, *args) -> tuple:
    work, base, pids = tmp_path / "child", tmp_path / "base", tmp_path / "pids"
    work.mkdir()
    (work / "conftest.py").write_text(CONFTEST)
    (work / "test_child.py").write_text(body)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PEER_PIDS=str(pids))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={base}", "--rootdir", str(work), *args, str(work)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert pids.exists(), f"the child never had its peers up:\n{proc.stdout}\n{proc.stderr}"
    deadline = time.monotonic() + 5       # SIGKILLed processes need a moment to go
    while leftovers(base) and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, base, [int(p) for p in pids.read_text().split()]


def _assert_all_gone(base: Path, pids: list, proc):
    assert not leftovers(base), (leftovers(base), proc.stdout[-2000:])
    assert not [p for p in pids if _alive(p)], pids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_peers_stopped_after_failed_and_timed_out_tests(tmp_path):
    proc, base, pids = _run_child(tmp_path, FAILS_AND_HANGS, "--timeout", "5")
    assert proc.returncode == 1 and "2 failed" in proc.stdout, proc.stdout[-2000:]
    _assert_all_gone(base, pids, proc)


def test_peers_stopped_when_the_run_gets_sigterm(tmp_path):
    proc, base, pids = _run_child(tmp_path, TERMINATED)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:])   # interrupted
    _assert_all_gone(base, pids, proc)
