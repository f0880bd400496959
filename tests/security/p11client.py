"""A PyKCS11 client run in a child Python (the built module loaded in-process, as a
client would), for attacks that need raw templates. `attack(token, body)` runs `body`
after PRELUDE and returns the JSON object the body left in `out`.

In the body: `s` is a logged-in R/W user session on token "e2e"; `call(fn, *args)` returns
the CK_RV the call ended with (0 for CKR_OK) and keeps the result in `last`;
`handle(obj)` is a PyKCS11 object handle's number; `copy(obj, template)` is C_CopyObject (PyKCS11 has none) through ctypes on the same
module; `T(...)` turns keyword attributes into a PyKCS11 template."""

import json

PRELUDE = r'''
import ctypes, json, os, struct
import PyKCS11
from PyKCS11 import *
from PyKCS11 import LowLevel

MODULE, PIN = {module!r}, {pin!r}
p11 = PyKCS11.PyKCS11Lib()
p11.load(MODULE)
slot = [x for x in p11.getSlotList(tokenPresent=True) if p11.getTokenInfo(x).label.strip() == "e2e"][0]
s = p11.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(PIN)
out = {{}}
last = None


def call(fn, *args, **kw):
    global last
    try:
        last = fn(*args, **kw)
        return 0
    except PyKCS11Error as err:
        last = None
        return err.value


def T(**attrs):
    return [(getattr(PyKCS11, "CKA_" + name), value) for name, value in attrs.items()]


def secret(**attrs):
    return T(CLASS=CKO_SECRET_KEY, TOKEN=False, **attrs)


def aes(**attrs):
    """A generated session AES-256 key; usages as the template asks, else the token's defaults."""
    return s.generateKey(secret(VALUE_LEN=32, **attrs), Mechanism(CKM_AES_KEY_GEN))


def flag(key, name):
    return bool(s.getAttributeValue(key, [getattr(PyKCS11, "CKA_" + name)])[0])


def handle(obj):
    return obj.value() if hasattr(obj, "value") else int(obj)


class _Attr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p), ("ulValueLen", ctypes.c_ulong)]


_so = ctypes.CDLL(MODULE)


def copy(obj, template):
    """C_CopyObject with boolean attributes: (rv, the new object's handle)."""
    values = [ctypes.c_ubyte(int(bool(v))) for _, v in template]
    attrs = (_Attr * max(len(template), 1))(*[
        _Attr(t, ctypes.cast(ctypes.pointer(v), ctypes.c_void_p), 1) for (t, _), v in zip(template, values)])
    new = ctypes.c_ulong()
    rv = _so.C_CopyObject(ctypes.c_ulong(s.session.value()), ctypes.c_ulong(handle(obj)), attrs,
                          ctypes.c_ulong(len(template)), ctypes.byref(new))
    obj = CK_OBJECT_HANDLE(s)
    obj.assign(new.value)
    return rv, obj
'''


def attack(token, body: str) -> dict:
    from tests.e2e.conftest import USER_PIN
    code = PRELUDE.format(module=token.module, pin=USER_PIN) + body + "\nprint(json.dumps(out))\n"
    proc = token.python(code)
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])
