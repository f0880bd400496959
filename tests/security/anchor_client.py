"""A PyKCS11 client for tests/security/test_anchor.py: runs STEPS (a JSON list) on the
token labelled "e2e": the CK_RV (or result) of each step.

    python anchor_client.py MODULE STEPS [CRASH_AT]

Steps: ["login", pin] (user login, then logout), ["setpin", old, new],
["create", label] (a token data object, logged in as the user),
["destroy", label], ["count", label] (public objects with that label: a number, or the
CK_RV of the failing call).  Each step opens its own R/W session and closes it.

Prints {"rv": [...], "advances": how many anchor counter increments this process made}.
CRASH_AT = N: the process dies (os._exit(9)) right after the N-th TPM anchor counter
increment, before the transaction that made it commits - the crash the anchor must
survive without locking the owner out.  The module shares this interpreter (it is loaded
into a Python process), so the patch reaches the engine's own anchor."""

import json
import os
import sys

import PyKCS11
from PyKCS11 import PyKCS11Error

module, steps = sys.argv[1], json.loads(sys.argv[2])
crash_at, calls = int(sys.argv[3]) if len(sys.argv) > 3 else 0, [0]
if crash_at >= 0:
    from provider.store import anchor
    real = anchor.TpmAnchor.advance

    def advance(self, serial, now=None):
        value = real(self, serial, now)
        calls[0] += 1
        if calls[0] == crash_at:
            os._exit(9)
        return value
    anchor.TpmAnchor.advance = advance

lib = PyKCS11.PyKCS11Lib()
lib.load(module)
RW = PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION


def slot():
    for s in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(s).label.strip() == "e2e":
            return s
    raise SystemExit("no token e2e")


def run(step):
    what, args = step[0], step[1:]
    session = lib.openSession(slot(), RW)
    try:
        if what == "login":
            session.login(args[0])
            session.logout()
        elif what == "setpin":
            session.login(args[0])
            session.setPin(args[0], args[1])
            session.logout()
        elif what == "create":
            session.login(args[1])
            session.createObject([(PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA), (PyKCS11.CKA_TOKEN, True),
                                  (PyKCS11.CKA_PRIVATE, False), (PyKCS11.CKA_LABEL, args[0]),
                                  (PyKCS11.CKA_VALUE, b"anchored")])
            session.logout()
        elif what == "destroy":
            session.login(args[1])
            for obj in session.findObjects([(PyKCS11.CKA_LABEL, args[0])]):
                session.destroyObject(obj)
            session.logout()
        elif what == "count":
            return len(session.findObjects([(PyKCS11.CKA_LABEL, args[0])]))
        return PyKCS11.CKR_OK
    finally:
        session.closeSession()


out = []
for step in steps:
    try:
        out.append(run(step))
    except PyKCS11Error as e:
        out.append(e.value)
print(json.dumps({"rv": out, "advances": calls[0]}))
