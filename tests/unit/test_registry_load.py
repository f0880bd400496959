"""The mechanism table is filled once, by the first caller: threads asking at the same
time as it (a service's first concurrent requests) wait for the whole table, never
see a half-filled one (that answered CKR_MECHANISM_INVALID for AES-GCM)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import threading
from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms import registry
start, failed = threading.Barrier(16), []
def ask():
    start.wait()
    try:
        registry.get(C.CKM_AES_GCM)
    except PKCS11Error as exc:
        failed.append(exc)
threads = [threading.Thread(target=ask) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(failed))
"""


def test_concurrent_first_lookups_see_the_whole_table():
    for _ in range(5):                       # a fresh interpreter each time: the table starts empty
        out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0"
