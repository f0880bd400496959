"""Checks of backend results with `cryptography`, from the returned public key only."""

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from provider import constants as C
from provider.backends.base import DIGEST_INFO
from provider.mechanisms.params import Mechanism, OaepParams, PssParams

MSG = b"FerroHSM backend test message"
HASHES = {"sha256": (hashes.SHA256(), C.CKM_SHA256, C.CKG_MGF1_SHA256),
          "sha384": (hashes.SHA384(), C.CKM_SHA384, C.CKG_MGF1_SHA384)}


def digest(name: str, msg: bytes = MSG) -> bytes:
    return hashlib.new(name, msg).digest()


def verify_ecdsa(ref, raw_sig: bytes, hash_name: str = "sha256", msg: bytes = MSG):
    pub = serialization.load_der_public_key(ref.public_der)
    n = len(raw_sig) // 2
    der = utils.encode_dss_signature(int.from_bytes(raw_sig[:n], "big"),
                                     int.from_bytes(raw_sig[n:], "big"))
    pub.verify(der, msg, ec.ECDSA(HASHES[hash_name][0]))


def sign_ecdsa_checked(backend, ref, hash_name="sha256"):
    sig = backend.sign(ref, Mechanism(C.CKM_ECDSA), digest(hash_name))
    verify_ecdsa(ref, sig, hash_name)
    return sig


def sign_rsa_checked(backend, ref, scheme: str, hash_name="sha256"):
    h, ckm, mgf = HASHES[hash_name]
    pub = serialization.load_der_public_key(ref.public_der)
    d = digest(hash_name)
    if scheme == "pkcs1":
        sig = backend.sign(ref, Mechanism(C.CKM_RSA_PKCS), DIGEST_INFO[ckm] + d)
        pub.verify(sig, MSG, padding.PKCS1v15(), h)
    else:
        sig = backend.sign(ref, Mechanism(C.CKM_RSA_PKCS_PSS, PssParams(ckm, mgf, len(d))), d)
        pub.verify(sig, MSG, padding.PSS(padding.MGF1(h), len(d)), h)
    return sig


def decrypt_rsa_checked(backend, ref, scheme: str, label: bytes = b""):
    pub = serialization.load_der_public_key(ref.public_der)
    secret = b"a 32-byte session key, say......"
    if scheme == "pkcs1":     # a backend does the raw operation; the engine unpads (rsapad)
        em = backend.decrypt(ref, Mechanism(C.CKM_RSA_X_509), pub.encrypt(secret, padding.PKCS1v15()))
        em = em.rjust(pub.key_size // 8, b"\0")
        assert em[:2] == b"\0\2" and em.endswith(b"\0" + secret) and b"\0" not in em[2:-33]
        return
    else:
        ct = pub.encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                              label or None))
        mech = Mechanism(C.CKM_RSA_PKCS_OAEP,
                         OaepParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, C.CKZ_DATA_SPECIFIED, label))
    assert backend.decrypt(ref, mech, ct) == secret
