"""Message-based AES-GCM with IVs the token generates (CKG_GENERATE_COUNTER), for
tests/e2e/test_two_processes.py: prints the IVs one process got, so the test can
check that no two processes, and no key and its copy, ever got the same one.
python-pkcs11 has no message functions, so this speaks ctypes (pyhost_client.py).

    python iv_client.py MODULE USER_PIN COUNT LABEL...
For each token secret key labelled LABEL (in turn, one C_MessageEncryptInit each),
COUNT C_EncryptMessage calls; prints {"LABEL": [iv hex, ...], ...} as JSON."""

import ctypes
import json
import sys
from ctypes import Structure, byref, c_ubyte, c_ulong, c_void_p

from pyhost_client import CKM_AES_GCM, Mechanism, Module, check

CKA_CLASS, CKA_LABEL, CKO_SECRET_KEY = 0x0, 0x3, 0x4
CKG_GENERATE_COUNTER = 0x2
IV_LEN, FIXED_BITS = 12, 32           # 4 fixed bytes, an 8-byte counter


class GcmMessageParams(Structure):
    _fields_ = [("pIv", c_void_p), ("ulIvLen", c_ulong), ("ulIvFixedBits", c_ulong),
                ("ivGenerator", c_ulong), ("pTag", c_void_p), ("ulTagBits", c_ulong)]


# Every integer argument is passed as a c_ulong: ctypes would pass a Python int as a C int.
def find_key(mod, session, label: bytes) -> int:
    tpl = mod.template((CKA_CLASS, bytes(c_ulong(CKO_SECRET_KEY))), (CKA_LABEL, label))
    check(mod.C_FindObjectsInit(c_ulong(session), tpl, c_ulong(len(tpl))), "C_FindObjectsInit")
    found, n = (c_ulong * 2)(), c_ulong(0)
    check(mod.C_FindObjects(c_ulong(session), found, c_ulong(2), byref(n)), "C_FindObjects")
    check(mod.C_FindObjectsFinal(c_ulong(session)), "C_FindObjectsFinal")
    assert n.value == 1, f"{n.value} keys labelled {label!r}"
    return found[0]


def ivs(mod, session, key: int, count: int) -> list:
    mech = Mechanism(CKM_AES_GCM, None, 0)
    check(mod.C_MessageEncryptInit(c_ulong(session), byref(mech), c_ulong(key)), "C_MessageEncryptInit")
    out = []
    data = b"sixteen bytes!!!"
    for _ in range(count):
        iv = ctypes.create_string_buffer(b"\xf1\xf2\xf3\xf4" + bytes(IV_LEN - 4), IV_LEN)
        tag = (c_ubyte * 16)()
        params = GcmMessageParams(ctypes.cast(iv, c_void_p), IV_LEN, FIXED_BITS, CKG_GENERATE_COUNTER,
                                  ctypes.cast(tag, c_void_p), 128)
        ct, n = (c_ubyte * len(data))(), c_ulong(len(data))
        check(mod.C_EncryptMessage(c_ulong(session), byref(params), c_ulong(ctypes.sizeof(params)), None,
                                   c_ulong(0), data, c_ulong(len(data)), ct, byref(n)), "C_EncryptMessage")
        out.append(iv.raw.hex())
    check(mod.C_MessageEncryptFinal(c_ulong(session)), "C_MessageEncryptFinal")
    return out


def main():
    path, pin, count, labels = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4:]
    mod = Module(path)
    session = mod.login(pin)
    result = {label: ivs(mod, session, find_key(mod, session, label.encode()), count) for label in labels}
    mod.finalize()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
