"""Helpers for the key-usage attacks (tests/security/test_key_separation.py and
test_always_authenticate.py), on top of client.py's PyKCS11 client process:
`attack(token, body)` runs `body` there and returns the dict it left in `out`.

Besides client.py's names the body sees PyKCS11's names unqualified (`CKA_WRAP`,
`Mechanism`, ...), `s` (a logged-in R/W user session), `call(fn, *args)` (the CK_RV the
call ended with as a number, 0 for CKR_OK; its result kept in `last`), `T(...)` (keyword
attributes as a PyKCS11 template), `secret(...)` (a session secret key's template),
`aes(...)` (a generated session AES-256 key with the token's defaults for what the
template leaves out), `flag(key, name)`, `handle(obj)` (a handle's number) and
`copy(obj, template)` (C_CopyObject through ctypes on the same module: PyKCS11 has none)."""

from .client import run

HELPERS = r'''
import ctypes, struct
from PyKCS11 import *

s = session("user")
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
    return [(getattr(P, "CKA_" + name), value) for name, value in attrs.items()]


def secret(**attrs):
    return T(CLASS=CKO_SECRET_KEY, TOKEN=False, **attrs)


def aes(**attrs):
    return s.generateKey(secret(VALUE_LEN=32, **attrs), Mechanism(CKM_AES_KEY_GEN))


def flag(key, name):
    return bool(s.getAttributeValue(key, [getattr(P, "CKA_" + name)])[0])


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
    return run(token, HELPERS + body)
