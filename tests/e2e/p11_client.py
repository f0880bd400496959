"""What the multi-process clients (step_client.py, stress_worker.py) share: loading
the module with python-pkcs11, the CK_RV a call ended with, and the keys the tests
make. These run as scripts in a subprocess (no PYTHONPATH; their own directory is
on sys.path), so they import nothing of ours."""

import re

import pkcs11
from pkcs11 import Attribute, KDF, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

OK = "CKR_OK"
DIGEST = b"\x5a" * 32           # what CKM_ECDSA signs: a hash value


def rv_name(exc: Exception) -> str:
    """The CK_RV behind a python-pkcs11 exception, as its CKR_ name: each mapped code
    has a class named for it (ObjectHandleInvalid -> CKR_OBJECT_HANDLE_INVALID);
    an unmapped one keeps the code in its message."""
    if not isinstance(exc, pkcs11.PKCS11Error):
        return f"PYTHON:{type(exc).__name__}:{exc}"
    if type(exc) is pkcs11.PKCS11Error:
        found = re.search(r"0x[0-9a-fA-F]+", str(exc))
        return f"CKR_0x{int(found.group(), 16):X}" if found else f"CKR_?:{exc}"
    return "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


def call(fn, *args, **kwargs):
    """(CKR name, result or None)."""
    try:
        return OK, fn(*args, **kwargs)
    except Exception as exc:      # every failure is a result here, the test judges it
        return rv_name(exc), None


def token(module: str, label: str = "e2e"):
    return pkcs11.lib(module).get_token(token_label=label)


def aes_key(session, label: str, id_: bytes, wraps: bool = False, **template):
    """A token AES-256 key that may be wrapped, and encrypt and decrypt or (`wraps`) wrap and
    unwrap: never both (key separation, provider/schema.py)."""
    tpl = {Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: True, Attribute.PRIVATE: True,
           Attribute.DERIVE: True, **template}
    caps = (MechanismFlag.WRAP | MechanismFlag.UNWRAP) if wraps else (MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
    return session.generate_key(KeyType.AES, 256, id=id_, label=label, store=True, capabilities=caps,
                                template=tpl)


def ec_pair(session, label: str, id_: bytes, store: bool = True):
    """A P-256 token key pair whose private key may sign and derive: (public, private)."""
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    return params.generate_keypair(
        id=id_, label=label, store=store,
        public_template={Attribute.VERIFY: True, Attribute.PRIVATE: False},
        private_template={Attribute.SIGN: True, Attribute.DERIVE: True, Attribute.PRIVATE: True})


def gcm_params(session):
    return GCMParams(session.generate_random(96), b"aad", 128)


def encrypt(session, key, data=b"sixteen bytes!!!"):
    params = gcm_params(session)
    ct = key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    assert key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=params) == data
    return len(ct)


def sign(key):
    return len(key.sign(DIGEST, mechanism=Mechanism.ECDSA))


def wrap(wrapping, key):
    return len(wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD))


def derive(base, peer_point: bytes):
    derived = base.derive_key(KeyType.AES, 256, mechanism=Mechanism.ECDH1_DERIVE,
                              mechanism_param=(KDF.NULL, None, peer_point),
                              template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
    return len(derived[Attribute.VALUE])


def find(session, template: dict) -> list:
    return list(session.get_objects(template))


__all__ = ["Attribute", "KeyType", "Mechanism", "ObjectClass", "OK", "rv_name", "call", "token",
           "aes_key", "ec_pair", "encrypt", "sign", "wrap", "derive", "find"]
