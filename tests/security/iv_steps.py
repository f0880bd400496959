"""A long-lived ctypes client for tests/security/test_iv_reuse.py, driven one JSON
command per line on stdin, one JSON answer per line on stdout (so a test can change the
token files between two steps of one running process).

    python iv_steps.py MODULE USER_PIN
First line: {"ready": true|false, "rv": CK_RV of the login}.  Commands:
    {"op": "make", "label": L}              a token AES-256 key that may encrypt
    {"op": "enc", "label": L, "n": N, "gen": G}
        C_MessageEncryptInit, then N C_EncryptMessage with CKG_GENERATE_COUNTER on an IV of
        4 fixed bytes and a G-byte counter part, then C_MessageEncryptFinal:
        {"rv": CK_RV of the first call that failed or 0, "ivs": [hex of each IV made]}
    {"op": "quit"}
"""

import ctypes
import json
import sys
from ctypes import byref, c_ubyte, c_ulong, c_void_p
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from iv_client import CKG_GENERATE_COUNTER, GcmMessageParams, find_key  # noqa: E402
from pyhost_client import CKF_RW_SESSION, CKF_SERIAL_SESSION, CKM_AES_GCM, CKU_USER, Mechanism, Module  # noqa: E402

CKA_CLASS, CKA_TOKEN, CKA_LABEL, CKA_ENCRYPT, CKA_VALUE_LEN = 0x0, 0x1, 0x3, 0x104, 0x161
CKM_AES_KEY_GEN = 0x1080
FIXED = b"\xf1\xf2\xf3\xf4"


def make(mod, session, label: bytes) -> int:
    tpl = mod.template((CKA_TOKEN, b"\x01"), (CKA_ENCRYPT, b"\x01"), (CKA_LABEL, label),
                       (CKA_VALUE_LEN, bytes(c_ulong(32))))
    mech, key = Mechanism(CKM_AES_KEY_GEN, None, 0), c_ulong(0)
    return mod.C_GenerateKey(c_ulong(session), byref(mech), tpl, c_ulong(len(tpl)), byref(key))


def enc(mod, session, key: int, n: int, gen: int) -> dict:
    mech, ivs = Mechanism(CKM_AES_GCM, None, 0), []
    rv = mod.C_MessageEncryptInit(c_ulong(session), byref(mech), c_ulong(key))
    data = b"sixteen bytes!!!"
    for _ in range(n if rv == 0 else 0):
        iv = ctypes.create_string_buffer(FIXED + bytes(gen), 4 + gen)
        tag = (c_ubyte * 16)()
        params = GcmMessageParams(ctypes.cast(iv, c_void_p), 4 + gen, 32, CKG_GENERATE_COUNTER,
                                  ctypes.cast(tag, c_void_p), 128)
        ct, size = (c_ubyte * len(data))(), c_ulong(len(data))
        rv = mod.C_EncryptMessage(c_ulong(session), byref(params), c_ulong(ctypes.sizeof(params)), None,
                                  c_ulong(0), data, c_ulong(len(data)), ct, byref(size))
        if rv:
            break
        ivs.append(iv.raw.hex())
    mod.C_MessageEncryptFinal(c_ulong(session))
    return {"rv": rv, "ivs": ivs}


def login(mod, pin: bytes) -> tuple:
    """(CK_RV, session): C_Initialize, a R/W session on the first slot, C_Login as the user."""
    session = c_ulong(0)
    rv = mod.C_Initialize(None) or mod.C_OpenSession(c_ulong(mod.slot()), c_ulong(CKF_RW_SESSION | CKF_SERIAL_SESSION),
                                                      None, None, byref(session)) \
        or mod.C_Login(session, c_ulong(CKU_USER), pin, c_ulong(len(pin)))
    return rv, session.value


def main():
    mod = Module(sys.argv[1])
    rv, session = login(mod, sys.argv[2].encode())
    print(json.dumps({"ready": rv == 0, "rv": rv}), flush=True)
    if rv:
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "make":
            out = {"rv": make(mod, session, cmd["label"].encode())}
        else:
            out = enc(mod, session, find_key(mod, session, cmd["label"].encode()), cmd["n"], cmd["gen"])
        print(json.dumps(out), flush=True)
    mod.finalize()


if __name__ == "__main__":
    main()
