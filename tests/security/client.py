"""Drive the built module from a client process, as an attacker's program would:
`run(hsm, body)` runs `body` in a fresh Python process (this venv, no PYTHONPATH) that
loaded libferrohsm-pkcs11.so through PyKCS11, and returns the dict it left in `out`.

The body sees: `P` (PyKCS11), `lib`, `slot` (the token "e2e"), `session(who)` (a R/W
session, logged in as "user", "so", or None), `rv(fn, *args)` (the CKR name a call
returns, "CKR_OK" if it returns), `find(s, **attrs)` (handles), and `out`."""

import json

PRELUDE = r'''
import json, sys
import PyKCS11 as P
lib = P.PyKCS11Lib()
lib.load(MODULE)
slot = next(s for s in lib.getSlotList(tokenPresent=True)
            if lib.getTokenInfo(s).label.strip() == "e2e")
out = {}

def session(who="user"):
    s = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    if who == "user":
        s.login(USER_PIN)
    elif who == "so":
        s.login(SO_PIN, user_type=P.CKU_SO)
    return s

def rv(fn, *args):
    try:
        fn(*args)
    except P.PyKCS11Error as err:
        return P.CKR[err.value]
    return "CKR_OK"

def find(s, **attrs):
    return s.findObjects([(getattr(P, "CKA_" + k), v) for k, v in attrs.items()])
'''


def run(hsm, body: str, check=True) -> dict:
    from tests.e2e.conftest import SO_PIN, USER_PIN
    code = (f"MODULE, USER_PIN, SO_PIN = {hsm.module!r}, {USER_PIN!r}, {SO_PIN!r}\n" + PRELUDE + body
            + "\nprint('OUT ' + json.dumps(out))\n")
    proc = hsm.python(code, check=check)
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("OUT ")]
    if not lines:
        raise AssertionError(f"the client printed no result:\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return json.loads(lines[-1][4:])
