"""C_WaitForSlotEvent and the legacy parallel functions through the built module,
from a C program; the token event comes from another process (pkcs11-tool)."""

import shlex
import shutil

from .conftest import SO_PIN


def test_slot_events_from_c(c_build, hsm):
    exe = c_build("slot_event_check")
    tool = shutil.which("pkcs11-tool")
    command = shlex.join([tool, "--module", hsm.module, "--init-token", "--slot", "0",
                          "--label", "other", "--so-pin", SO_PIN]) + " >/dev/null"
    proc = hsm.run(exe, hsm.module, command, "other", check=False, timeout=180)
    report = proc.stdout.decode() + proc.stderr.decode()
    assert "FAIL" not in report, report
    assert proc.returncode == 0, report
    assert "0 failures" in report
    assert report.count("ok ") == 15, report
