"""The module loaded into a Python process (python-pkcs11), which the embedded
part must share rather than start its own interpreter. Runs in a subprocess of
this venv's Python, with no PYTHONPATH."""

import json

import pytest

from .conftest import USER_PIN

SCRIPT = """
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label="e2e")
result = {"manufacturer": lib.manufacturer_id, "version": list(lib.cryptoki_version)}
with token.open(user_pin=sys.argv[2], rw=True) as session:
    # python-pkcs11's default capabilities add WRAP and UNWRAP, which key separation refuses
    key = session.generate_key(KeyType.AES, 256, label="py-aes", store=True,
                               capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
    iv = session.generate_random(96)
    params = GCMParams(iv, b"header", 128)
    ct = key.encrypt(b"hello from python-pkcs11", mechanism=Mechanism.AES_GCM, mechanism_param=params)
    result["gcm"] = key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=params).decode()
    result["gcm_len"] = len(ct)

    ecparams = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    pub, priv = ecparams.generate_keypair(store=False, label="py-ec")
    sig = priv.sign(b"data", mechanism=Mechanism.ECDSA_SHA256)
    result["ec_ok"] = pub.verify(b"data", sig, mechanism=Mechanism.ECDSA_SHA256)
    result["ec_bad"] = pub.verify(b"other", sig, mechanism=Mechanism.ECDSA_SHA256)

    found = list(session.get_objects({Attribute.LABEL: "py-aes", Attribute.CLASS: ObjectClass.SECRET_KEY}))
    result["found"] = len(found)
print(json.dumps(result))
"""


@pytest.fixture
def py_result(token):
    proc = token.python(SCRIPT.replace("sys.argv[1]", repr(token.module)).replace("sys.argv[2]", repr(USER_PIN)))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_python_pkcs11_session(py_result):
    assert py_result["manufacturer"] == "FerroHSM"
    assert py_result["version"] == [3, 0]
    assert py_result["gcm"] == "hello from python-pkcs11"
    assert py_result["gcm_len"] == len("hello from python-pkcs11") + 16
    assert py_result["ec_ok"] is True and py_result["ec_bad"] is False
    assert py_result["found"] == 1


def test_token_key_from_python_seen_by_pkcs11_tool(token, py_result):
    listing = token.user("--list-objects", "--type", "secrkey").stdout.decode()
    assert "py-aes" in listing
