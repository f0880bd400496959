"""A PKCS#11 client holding message-based AES-GCM on one key, for
tests/e2e/test_native_uses.py (ctypes: python-pkcs11 and PyKCS11 have no message
functions; pyhost_client.py).

    python uses_client.py MODULE USER_PIN LABEL|-
LABEL: the token secret key of that label; "-": a session AES key it generates.
Reads commands from stdin, one a line, answers each with a line:
    single N   N times C_EncryptInit + C_Encrypt       -> "ok"
    init       C_MessageEncryptInit                    -> "ok"
    msg N      N C_EncryptMessage calls                -> "ok"
    try S      C_EncryptMessage until one fails, at most S seconds
                                                        -> "stopped SECONDS CKR" | "ran SECONDS"
    final      C_MessageEncryptFinal                   -> "ok"
    close      C_CloseSession                          -> "ok"
    finalize   C_Finalize, then exits                  -> "ok"
"""

import ctypes
import sys
import time
from ctypes import byref, c_ubyte, c_ulong, c_void_p

from iv_client import CKG_GENERATE_COUNTER, FIXED_BITS, IV_LEN, GcmMessageParams, find_key
from pyhost_client import CKM_AES_GCM, Mechanism, Module, check

DATA = b"sixteen bytes!!!"


def message(mod, session) -> int:
    iv = ctypes.create_string_buffer(b"\xf1\xf2\xf3\xf4" + bytes(IV_LEN - 4), IV_LEN)
    tag = (c_ubyte * 16)()
    params = GcmMessageParams(ctypes.cast(iv, c_void_p), IV_LEN, FIXED_BITS, CKG_GENERATE_COUNTER,
                              ctypes.cast(tag, c_void_p), 128)
    ct, n = (c_ubyte * len(DATA))(), c_ulong(len(DATA))
    return mod.C_EncryptMessage(c_ulong(session), byref(params), c_ulong(ctypes.sizeof(params)), None,
                                c_ulong(0), DATA, c_ulong(len(DATA)), ct, byref(n))


def main():
    path, pin, label = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    mod = Module(path)
    session = mod.login(pin)
    key = mod.aes_key(session) if label == "-" else find_key(mod, session, label.encode())
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        answer = "ok"
        if cmd == "single":
            for _ in range(int(arg[0])):
                mod.gcm_init(session, key)
                mod.encrypt(session, DATA)
        elif cmd == "init":
            mech = Mechanism(CKM_AES_GCM, None, 0)
            check(mod.C_MessageEncryptInit(c_ulong(session), byref(mech), c_ulong(key)), "C_MessageEncryptInit")
        elif cmd == "msg":
            for _ in range(int(arg[0])):
                check(message(mod, session), "C_EncryptMessage")
        elif cmd == "try":
            start = time.monotonic()
            answer = None
            while time.monotonic() - start < float(arg[0]):
                rv = message(mod, session)
                if rv:
                    answer = f"stopped {time.monotonic() - start:.3f} 0x{rv:x}"
                    break
                time.sleep(0.002)
            answer = answer or f"ran {time.monotonic() - start:.3f}"
        elif cmd == "final":
            check(mod.C_MessageEncryptFinal(c_ulong(session)), "C_MessageEncryptFinal")
        elif cmd == "close":
            check(mod.C_CloseSession(c_ulong(session)), "C_CloseSession")
        elif cmd == "finalize":
            mod.finalize()
            print(answer, flush=True)
            return
        print(answer, flush=True)


if __name__ == "__main__":
    main()
