"""Make a token directory with the first release's code (run with PYTHONPATH at commit 284cf07)."""
import os, sys, pathlib
sys.path.insert(0, "/work/main/tests/unit")
from provider import constants as C
from provider.config import Config
from provider.library import Library
from provider.mechanisms.params import Mechanism, GcmMessageParams
from tmpl import T

out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
conf = out.parent / "make.conf"
conf.write_text(f'[tokens]\ndirectory = "{out}"\n[log]\nlevel = "ERROR"\n')
lib = Library(Config.parse(conf.read_text(), str(conf)))
slot = lib.free_slot
lib.init_token(slot, b"so-pin-v1", b"v1 token".ljust(32))
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
s = lib.open_session(slot, RW); lib.login(s, C.CKU_SO, b"so-pin-v1"); lib.init_pin(s, b"user-pin-v1"); lib.logout(s)
lib.login(s, C.CKU_USER, b"user-pin-v1")
aes = lib.generate_key(s, Mechanism(C.CKM_AES_KEY_GEN), T(TOKEN=True, PRIVATE=True, LABEL=b"v1-aes", VALUE_LEN=32, ENCRYPT=True, DECRYPT=True))
pub, priv = lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN), T(TOKEN=True, LABEL=b"v1-ec", EC_PARAMS=bytes.fromhex("06082a8648ce3d030107"), VERIFY=True), T(TOKEN=True, PRIVATE=True, LABEL=b"v1-ec", SIGN=True))
lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, LABEL=b"v1-data", VALUE=b"hello v1"))
gone = lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, LABEL=b"v1-gone", VALUE=b"bye"))
lib.destroy_object(s, gone)
# use the AES key for counter IVs once: the old counter file gets its entry
lib.message_encrypt_init(s, Mechanism(C.CKM_AES_GCM), aes)
r = lib.encrypt_message(s, GcmMessageParams(b"\0" * 12, 32, C.CKG_GENERATE_COUNTER, 128), b"", b"data", 4096)
print("encrypt_message ->", r)
lib.finalize()
print(sorted(os.listdir(out)))
