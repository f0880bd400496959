"""A PKCS#11 client (PyKCS11, so the module shares this Python) for tests/security/test_pins.py:
one C_Login or C_InitToken on the token labelled "e2e" (or the first slot), then prints
`rv N` (the CK_RV). Options:
  --die-after-count   SIGKILL this process inside the PIN check right after the try was
                      committed and before its answer is computed (the engine's GCM unwrap
                      of the master key; on the previous release: its slow PIN check)
  --sleeps            print `sleeps [...]`: the waits the engine asked for before the check
  --wait              print `ready` and read a line from stdin before the call (a start signal)

    python pin_client.py MODULE login|login-so|init-token PIN [options]
"""

import json
import os
import signal
import sys

import PyKCS11

module, action, pin = sys.argv[1:4]
opts = set(sys.argv[4:])
lib = PyKCS11.PyKCS11Lib()
lib.load(module)

from provider.store import sealing  # noqa: E402  (the module's own engine: one interpreter)

if "--die-after-count" in opts:
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    sealing.unwrap_master = die
slept = []
if "--sleeps" in opts:
    class Clock:                                      # the engine's time module, sleep recorded
        def __getattr__(self, name):
            return getattr(__import__("time"), name)

        @staticmethod
        def sleep(seconds):
            slept.append(seconds)
    sealing.time = Clock()


def slot_of(label: str):
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            return slot
    return lib.getSlotList(tokenPresent=True)[0]


rv = 0
if "--wait" in opts:
    print("ready", flush=True)
    sys.stdin.readline()
try:
    slot = slot_of("e2e")
    if action == "init-token":
        lib.initToken(slot, pin, "e2e")
    else:
        session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        session.login(pin, PyKCS11.CKU_SO if action == "login-so" else PyKCS11.CKU_USER)
except PyKCS11.PyKCS11Error as err:
    rv = err.value
if "--sleeps" in opts:
    print("sleeps " + json.dumps(slept))
print(f"rv {rv}", flush=True)
