"""Issue 11 item 10: `ferrohsm migrate-key` strips policy.

Attack: a key made with a narrow policy (no signing, one allowed mechanism, context
login each use, not modifiable) is moved to another token, where before it came out
able to sign and derive, modifiable, with no mechanism list and no
CKA_ALWAYS_AUTHENTICATE: the move widened what the key may do.  Now every policy
attribute is carried over unchanged (provider/migrate.py PRIVATE_POLICY, PUBLIC_POLICY),
a CKA_WRAP_WITH_TRUSTED key is refused (the transport key is not a trusted one), and a
wrapped blob changed on its way is refused before it is unwrapped (each end hashes its
own bytes).  The keys are made and read back through the built module (PyKCS11), the
move is the `ferrohsm` command; destinations: a SoftHSM2-held token and an engine one."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provider import constants as C
from provider.config import Config
from provider.library import Library
from provider.migrate import LOG_NAME
from tests.backends.engine_env import PIN, backend_settings, init_token
from tests.e2e.conftest import clean_env

FERROHSM = str(Path(sys.executable).parent / "ferrohsm")
# what is read back from both keys and must be equal (CKA_WRAP/UNWRAP_TEMPLATE: PyKCS11
# cannot read attribute lists; provider/migrate.py carries them, test_policy_tables_cover...)
PRIVATE_CHECK = (
    C.CKA_PRIVATE, C.CKA_MODIFIABLE, C.CKA_COPYABLE, C.CKA_DESTROYABLE, C.CKA_LABEL, C.CKA_ID,
    C.CKA_SUBJECT, C.CKA_START_DATE, C.CKA_END_DATE, C.CKA_SIGN, C.CKA_SIGN_RECOVER, C.CKA_DECRYPT,
    C.CKA_UNWRAP, C.CKA_DERIVE, C.CKA_SENSITIVE, C.CKA_EXTRACTABLE, C.CKA_WRAP_WITH_TRUSTED,
    C.CKA_ALWAYS_AUTHENTICATE, C.CKA_ALLOWED_MECHANISMS, C.CKA_KEY_TYPE, C.CKA_EC_PARAMS,
    C.CKA_PUBLIC_KEY_INFO)
PUBLIC_CHECK = (
    C.CKA_PRIVATE, C.CKA_MODIFIABLE, C.CKA_COPYABLE, C.CKA_DESTROYABLE, C.CKA_LABEL, C.CKA_ID,
    C.CKA_SUBJECT, C.CKA_START_DATE, C.CKA_END_DATE, C.CKA_VERIFY, C.CKA_VERIFY_RECOVER,
    C.CKA_ENCRYPT, C.CKA_WRAP, C.CKA_DERIVE, C.CKA_ALLOWED_MECHANISMS, C.CKA_EC_POINT)

MAKE = r"""
import struct, sys
import PyKCS11
from PyKCS11 import *
module, pin = sys.argv[1:3]
lib = PyKCS11Lib(); lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == "m-src")
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(pin)
mechs = lambda *m: struct.pack("=%dQ" % len(m), *m)
p256 = bytes.fromhex("06082a8648ce3d030107")
for key_id, trusted in ((0x4d, False), (0x4e, False), (0x57, True)):
    s.generateKeyPair(
        [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_TOKEN, True), (CKA_EC_PARAMS, p256), (CKA_ID, bytes([key_id])),
         (CKA_LABEL, "narrow"), (CKA_VERIFY, True), (CKA_DERIVE, False), (CKA_MODIFIABLE, False),
         (CKA_SUBJECT, b"CN=narrow pub"), (CKA_ALLOWED_MECHANISMS, mechs(CKM_ECDSA_SHA256))],
        [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_TOKEN, True), (CKA_PRIVATE, True), (CKA_ID, bytes([key_id])),
         (CKA_LABEL, "narrow"), (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, True), (CKA_SIGN, False),
         (CKA_SIGN_RECOVER, False), (CKA_DECRYPT, False), (CKA_UNWRAP, False), (CKA_DERIVE, True),
         (CKA_ALWAYS_AUTHENTICATE, True), (CKA_MODIFIABLE, False), (CKA_COPYABLE, False),
         (CKA_WRAP_WITH_TRUSTED, trusted), (CKA_SUBJECT, b"CN=narrow"),
         (CKA_START_DATE, b"20260101"), (CKA_END_DATE, b"20301231"),
         (CKA_ALLOWED_MECHANISMS, mechs(CKM_ECDH1_DERIVE))],
        mecha=PyKCS11.Mechanism(CKM_EC_KEY_PAIR_GEN, None))
"""

READ = r"""
import json, sys
import PyKCS11
from PyKCS11 import *
module, pin, label, key_id = sys.argv[1:5]
priv_attrs, pub_attrs = json.loads(sys.argv[5]), json.loads(sys.argv[6])
lib = PyKCS11Lib(); lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(pin)
def read(obj, types):
    out = {}
    for t in types:
        try:
            v = s.getAttributeValue(obj, [t])[0]
        except PyKCS11.PyKCS11Error as e:
            v = CKR[e.value]
        out[str(t)] = bytes(v).hex() if isinstance(v, (list, tuple)) else v
    return out
out = {}
for cls, types in ((CKO_PRIVATE_KEY, priv_attrs), (CKO_PUBLIC_KEY, pub_attrs)):
    found = s.findObjects([(CKA_CLASS, cls), (CKA_ID, bytes.fromhex(key_id))])
    out[str(cls)] = [read(o, types) for o in found]
priv = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_ID, bytes.fromhex(key_id))])
if priv:
    try:
        s.sign(priv[0], b"x" * 32, PyKCS11.Mechanism(CKM_ECDSA, None))
        out["sign"] = "CKR_OK"
    except PyKCS11.PyKCS11Error as e:
        out["sign"] = CKR[e.value]
    try:
        s.setAttributeValue(priv[0], [(CKA_LABEL, "wider")])
        out["set_label"] = "CKR_OK"
    except PyKCS11.PyKCS11Error as e:
        out["set_label"] = CKR[e.value]
print(json.dumps(out))
"""


@pytest.fixture
def tokens(tmp_path, softhsm):
    text = (f'[tokens]\ndirectory = "{tmp_path / "tokens"}"\n[log]\nlevel = "ERROR"\n'
            f'file = "{tmp_path / "log"}"\n[backends.shsm]\n{backend_settings("softhsm", {"softhsm": softhsm})}'
            '[token."m-shsm"]\nbackends = ["shsm"]\nfallback = "none"\n')
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(text)
    lib = Library(Config.parse(text, str(conf)))
    for label in ("m-src", "m-shsm", "m-soft"):
        init_token(lib, label)
    lib.finalize()
    env = clean_env(conf)
    _run(env, sys.executable, "-c", MAKE, _module(), PIN.decode())
    return env, tmp_path


def _module() -> str:
    from tests.e2e.conftest import installed_module
    return str(installed_module())


def _run(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return proc


def _read(env, label: str, key_id: str) -> dict:
    proc = _run(env, sys.executable, "-c", READ, _module(), PIN.decode(), label, key_id,
                json.dumps(PRIVATE_CHECK), json.dumps(PUBLIC_CHECK))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _migrate(env, dest: str, key_id: str, *, python=None) -> subprocess.CompletedProcess:
    args = ["migrate-key", "--from-token", "m-src", "--to-token", dest, "--id", key_id,
            "--approver", "alice", "--from-pin", PIN.decode(), "--to-pin", PIN.decode()]
    if python is None:
        return _run(env, FERROHSM, *args, check=False)
    return _run(env, sys.executable, "-c", python, *args, check=False)


@pytest.mark.parametrize("dest", ["m-shsm", "m-soft"])
def test_migrated_key_keeps_every_policy_attribute(module, tokens, dest):
    env, path = tokens
    proc = _migrate(env, dest, "4d")
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    src, dst = _read(env, "m-src", "4d"), _read(env, dest, "4d")
    [src_priv], [dst_priv] = src[str(C.CKO_PRIVATE_KEY)], dst[str(C.CKO_PRIVATE_KEY)]
    [src_pub], [dst_pub] = src[str(C.CKO_PUBLIC_KEY)], dst[str(C.CKO_PUBLIC_KEY)]
    name = {str(cka): C.name_of("CKA_", cka) for cka in (*PRIVATE_CHECK, *PUBLIC_CHECK)}
    differ = {name[t]: (src_priv[t], dst_priv[t]) for t in src_priv if src_priv[t] != dst_priv[t]}
    assert differ == {}, differ
    differ = {name[t]: (src_pub[t], dst_pub[t]) for t in src_pub if src_pub[t] != dst_pub[t]}
    assert differ == {}, differ
    # what the narrow policy says, read back from the moved key, and enforced there
    assert dst_priv[str(C.CKA_SIGN)] is False and dst_priv[str(C.CKA_ALWAYS_AUTHENTICATE)] is True
    assert dst_priv[str(C.CKA_MODIFIABLE)] is False
    assert dst_priv[str(C.CKA_ALLOWED_MECHANISMS)] == C.CKM_ECDH1_DERIVE.to_bytes(8, "little").hex()
    assert dst["sign"] == "CKR_KEY_FUNCTION_NOT_PERMITTED"
    assert dst["set_label"] == "CKR_ACTION_PROHIBITED"
    log = path / "tokens" / LOG_NAME
    record = json.loads(log.read_text().splitlines()[-1])
    assert record["outcome"] == "ok" and record["sha256_source"] == record["sha256_destination"]
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_wrap_with_trusted_key_is_not_moved(module, tokens):
    env, path = tokens
    proc = _migrate(env, "m-soft", "57")
    assert proc.returncode == 1 and b"CKA_WRAP_WITH_TRUSTED" in proc.stdout
    assert _read(env, "m-soft", "57")[str(C.CKO_PRIVATE_KEY)] == []


TAMPER = r"""
import sys
import provider.migrate as m
m.transfer = lambda blob: bytes([blob[0] ^ 1]) + bytes(blob[1:])     # one bit, on the way
from provider.cli import app
sys.argv = ["ferrohsm", *sys.argv[1:]]
app()
"""


def test_blob_changed_in_transit_is_refused(module, tokens):
    env, path = tokens
    proc = _migrate(env, "m-shsm", "4e", python=TAMPER)
    assert proc.returncode == 1 and b"integrity hash mismatch" in proc.stdout, proc.stdout.decode()
    assert _read(env, "m-shsm", "4e")[str(C.CKO_PRIVATE_KEY)] == []       # nothing unwrapped
    record = json.loads((path / "tokens" / LOG_NAME).read_text().splitlines()[-1])
    assert record["outcome"] == "failed" and "CKR_WRAPPED_KEY_INVALID" in record["reason"]
    assert record["sha256_source"] != record["sha256_destination"]


def test_policy_tables_cover_the_schema():
    """A policy attribute added to the schema must be carried (or listed as not carried)."""
    from provider import schema
    from provider.migrate import NOT_CARRIED, PRIVATE_POLICY, PUBLIC_POLICY
    material = {C.CKA_CLASS, C.CKA_KEY_TYPE, C.CKA_PUBLIC_KEY_INFO, C.CKA_FERRO_BACKEND,
                C.CKA_FERRO_KEY_REF}
    for cls, carried in ((C.CKO_PRIVATE_KEY, PRIVATE_POLICY), (C.CKO_PUBLIC_KEY, PUBLIC_POLICY)):
        rows = schema.rows(cls, None)
        settable = {cka for cka, (flags, _) in rows.items() if flags & (schema.F.GEN | schema.F.CREATE)}
        assert settable - material - set(carried) - set(NOT_CARRIED) == set(), C.name_of("CKO_", cls)
