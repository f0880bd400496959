"""python-pkcs11 as a client: walks its API surface against one module (in this process).
Signatures are verified and ciphertexts checked with `cryptography`, not with the module.
Run by conformance/test_python_pkcs11.py; prints PASS/FAIL/SKIP lines (see harness.py).
"""

import hashlib
import hmac as hmac_mod
import os

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams, MGF, CTRParams
from pkcs11.util.ec import (encode_ec_public_key, encode_ecdsa_signature,
                            encode_named_curve_parameters)
from pkcs11.util.rsa import encode_rsa_public_key
from pkcs11.util.x509 import decode_x509_certificate

from harness import Skip, check, env, main

DATA = os.urandom(333)
# the usages of the data keys this walk makes: python-pkcs11's default capabilities add WRAP
# and UNWRAP to ENCRYPT and DECRYPT, which FerroHSM's key separation refuses on one key
DATA_KEY = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.SIGN | MechanismFlag.VERIFY


class Ctx:
    def __init__(self):
        path, label, self.pin, self.so_pin = env()
        self.lib = pkcs11.lib(path)
        self.token = self.lib.get_token(token_label=label)
        self._s = None
        self.mechs = self.token.slot.get_mechanisms()
        self.keys = {}

    @property
    def s(self):
        """The logged-in R/W session, opened on first use (after the wrong-PIN check)."""
        if self._s is None:
            self._s = self.token.open(user_pin=self.pin, rw=True)
        return self._s

    def need(self, *mechs):
        missing = [m.name for m in mechs if m not in self.mechs]
        if missing:
            raise Skip(f"module does not list {', '.join(missing)}")


def crypto_pub(der):
    return serialization.load_der_public_key(der)


@check
def library_and_slots(c):
    assert c.lib.cryptoki_version[0] >= 2, c.lib.cryptoki_version
    assert c.lib.manufacturer_id and c.lib.library_description
    slots = c.lib.get_slots(token_present=True)
    assert any(s.get_token().label == c.token.label for s in slots)
    assert c.token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
    assert c.token.flags & pkcs11.TokenFlag.LOGIN_REQUIRED


@check
def mechanism_info(c):
    for m, flag in ((Mechanism.RSA_PKCS_KEY_PAIR_GEN, pkcs11.MechanismFlag.GENERATE_KEY_PAIR),
                    (Mechanism.EC_KEY_PAIR_GEN, pkcs11.MechanismFlag.GENERATE_KEY_PAIR),
                    (Mechanism.AES_KEY_GEN, pkcs11.MechanismFlag.GENERATE)):
        info = c.token.slot.get_mechanism_info(m)
        assert info.max_key_length >= info.min_key_length > 0, (m, info)
        assert info.flags & flag, (m, info.flags)


@check
def session_ro_and_random_digest(c):
    with c.token.open() as ro:
        assert len(ro.generate_random(256)) == 32
        assert ro.digest(DATA, mechanism=Mechanism.SHA256) == hashlib.sha256(DATA).digest()
        assert ro.digest(DATA, mechanism=Mechanism.SHA512) == hashlib.sha512(DATA).digest()


@check
def wrong_pin(c):
    try:
        c.token.open(user_pin="000000").close()
    except pkcs11.PinIncorrect:
        return
    raise AssertionError("wrong PIN accepted")


@check
def aes_keygen(c):
    c.keys["aes"] = c.s.generate_key(KeyType.AES, 256, label="py-aes", id=b"\x01", store=True,
                                     capabilities=DATA_KEY)
    assert c.keys["aes"][Attribute.VALUE_LEN] == 32
    assert c.keys["aes"][Attribute.SENSITIVE] and not c.keys["aes"][Attribute.EXTRACTABLE]


@check
def aes_cbc_pad(c):
    k, iv = c.keys["aes"], os.urandom(16)
    ct = k.encrypt(DATA, mechanism_param=iv)
    assert len(ct) % 16 == 0 and k.decrypt(ct, mechanism_param=iv) == DATA


@check
def aes_gcm(c):
    c.need(Mechanism.AES_GCM)
    params = GCMParams(os.urandom(12), b"header", 128)
    k = c.keys["aes"]
    ct = k.encrypt(DATA, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    assert len(ct) == len(DATA) + 16
    assert k.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=params) == DATA


@check
def aes_gcm_known_key(c):
    """GCM output equals cryptography's for an imported key value."""
    c.need(Mechanism.AES_GCM)
    raw, nonce = os.urandom(32), os.urandom(12)
    k = c.s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                           Attribute.VALUE: raw, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                           Attribute.LABEL: "py-aes-import"})
    ct = k.encrypt(DATA, mechanism=Mechanism.AES_GCM,
                   mechanism_param=GCMParams(nonce, b"aad", 128))
    assert ct == AESGCM(raw).encrypt(nonce, DATA, b"aad")


@check
def aes_ctr_and_ecb(c):
    c.need(Mechanism.AES_CTR, Mechanism.AES_ECB)
    k = c.keys["aes"]
    p = CTRParams(os.urandom(8))
    ct = k.encrypt(DATA, mechanism=Mechanism.AES_CTR, mechanism_param=p)
    assert len(ct) == len(DATA) and k.decrypt(ct, mechanism=Mechanism.AES_CTR,
                                              mechanism_param=p) == DATA
    block = DATA[:64]
    assert k.decrypt(k.encrypt(block, mechanism=Mechanism.AES_ECB),
                     mechanism=Mechanism.AES_ECB) == block


@check
def aes_key_wrap(c):
    c.need(Mechanism.AES_KEY_WRAP)
    raw = os.urandom(16)
    kek_raw = os.urandom(32)
    kek = c.s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                             Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: kek_raw,
                             Attribute.WRAP: True, Attribute.UNWRAP: True})
    tgt = c.s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                             Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: raw,
                             Attribute.EXTRACTABLE: True, Attribute.ENCRYPT: True,
                             Attribute.SENSITIVE: False})
    wrapped = kek.wrap_key(tgt, mechanism=Mechanism.AES_KEY_WRAP)
    assert aes_key_unwrap(kek_raw, wrapped) == raw
    new = kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped,
                         mechanism=Mechanism.AES_KEY_WRAP, label="py-unwrapped",
                         template={Attribute.ENCRYPT: True, Attribute.EXTRACTABLE: True,
                                   Attribute.SENSITIVE: False})
    assert new[Attribute.VALUE] == raw


@check
def hmac_sha256(c):
    c.need(Mechanism.SHA256_HMAC)
    raw = os.urandom(32)
    k = c.s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                           Attribute.KEY_TYPE: KeyType.GENERIC_SECRET, Attribute.VALUE: raw,
                           Attribute.SIGN: True, Attribute.VERIFY: True})
    mac = k.sign(DATA, mechanism=Mechanism.SHA256_HMAC)
    assert mac == hmac_mod.new(raw, DATA, hashlib.sha256).digest()
    assert k.verify(DATA, mac, mechanism=Mechanism.SHA256_HMAC)


@check
def rsa_keypair(c):
    pub, priv = c.s.generate_keypair(KeyType.RSA, 2048, label="py-rsa", id=b"\x02", store=True,
                                     capabilities=DATA_KEY)
    c.keys["rsa"] = (pub, priv)
    assert pub[Attribute.MODULUS_BITS] == 2048 and pub[Attribute.PUBLIC_EXPONENT] == b"\x01\x00\x01"


@check
def rsa_pkcs1_sign(c):
    pub, priv = c.keys["rsa"]
    sig = priv.sign(DATA, mechanism=Mechanism.SHA256_RSA_PKCS)
    crypto_pub(encode_rsa_public_key(pub)).verify(sig, DATA, padding.PKCS1v15(), hashes.SHA256())
    assert pub.verify(DATA, sig, mechanism=Mechanism.SHA256_RSA_PKCS)


@check
def rsa_pss_sign(c):
    c.need(Mechanism.SHA256_RSA_PKCS_PSS)
    pub, priv = c.keys["rsa"]
    param = (Mechanism.SHA256, MGF.SHA256, 32)
    sig = priv.sign(DATA, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=param)
    crypto_pub(encode_rsa_public_key(pub)).verify(
        sig, DATA, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


@check
def rsa_oaep(c):
    pub, priv = c.keys["rsa"]
    cpub = crypto_pub(encode_rsa_public_key(pub))
    msg = DATA[:64]
    ct = cpub.encrypt(msg, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    assert priv.decrypt(ct, mechanism=Mechanism.RSA_PKCS_OAEP) == msg
    assert priv.decrypt(pub.encrypt(msg, mechanism=Mechanism.RSA_PKCS_OAEP),
                        mechanism=Mechanism.RSA_PKCS_OAEP) == msg


@check
def rsa_oaep_sha256(c):
    if c.lib.manufacturer_id.startswith("SoftHSM"):
        raise Skip("SoftHSM2 2.6.1 supports RSA-OAEP with SHA-1 only")
    pub, priv = c.keys["rsa"]
    msg = DATA[:64]
    ct = crypto_pub(encode_rsa_public_key(pub)).encrypt(
        msg, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    assert priv.decrypt(ct, mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(Mechanism.SHA256, MGF.SHA256, None)) == msg


def _ec_keypair(c, curve, label, **kw):
    params = c.s.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True)
    return params.generate_keypair(label=label, store=True, **kw)


@check
def ecdsa_curves(c):
    for curve, h, ch in (("secp256r1", "sha256", hashes.SHA256()),
                         ("secp384r1", "sha384", hashes.SHA384()),
                         ("secp521r1", "sha512", hashes.SHA512())):
        pub, priv = _ec_keypair(c, curve, f"py-{curve}")
        c.keys.setdefault("ec", (pub, priv))
        sig = priv.sign(hashlib.new(h, DATA).digest(), mechanism=Mechanism.ECDSA)
        crypto_pub(encode_ec_public_key(pub)).verify(encode_ecdsa_signature(sig), DATA,
                                                     ec.ECDSA(ch))


@check
def ecdh_derive(c):
    c.need(Mechanism.ECDH1_DERIVE)
    pub, priv = _ec_keypair(c, "secp256r1", "py-ecdh", capabilities=pkcs11.MechanismFlag.DERIVE
                            | pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY)
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    secret = priv.derive_key(KeyType.GENERIC_SECRET, 256,
                             mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
                             template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
    mine = crypto_pub(encode_ec_public_key(pub))
    assert secret[Attribute.VALUE] == peer.exchange(ec.ECDH(), mine)


@check
def ed25519(c):
    c.need(Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA)
    params = c.s.create_domain_parameters(
        KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
        local=True)
    pub, priv = params.generate_keypair(label="py-ed25519", store=True)
    sig = priv.sign(DATA, mechanism=Mechanism.EDDSA)
    assert len(sig) == 64 and pub.verify(DATA, sig, mechanism=Mechanism.EDDSA)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    point = pub[Attribute.EC_POINT]
    raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point
    Ed25519PublicKey.from_public_bytes(raw).verify(sig, DATA)


@check
def attributes_and_find(c):
    _, priv = c.keys["rsa"]
    priv[Attribute.LABEL] = "py-rsa-renamed"
    found = list(c.s.get_objects({Attribute.LABEL: "py-rsa-renamed",
                                  Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
    assert len(found) == 1 and found[0][Attribute.ID] == b"\x02"
    assert found[0][Attribute.SENSITIVE] and found[0][Attribute.ALWAYS_SENSITIVE]
    try:
        found[0][Attribute.PRIVATE_EXPONENT]
        raise AssertionError("sensitive attribute readable")
    except pkcs11.AttributeSensitive:
        pass
    assert c.s.get_key(label="py-aes", key_type=KeyType.AES)[Attribute.ID] == b"\x01"


@check
def copy_and_destroy(c):
    k = c.s.generate_key(KeyType.AES, 128, label="py-copy-src", capabilities=DATA_KEY)
    dup = k.copy({Attribute.LABEL: "py-copy-dst"})
    assert dup[Attribute.LABEL] == "py-copy-dst" and dup[Attribute.KEY_TYPE] == KeyType.AES
    dup.destroy()
    assert not list(c.s.get_objects({Attribute.LABEL: "py-copy-dst"}))


@check
def certificate_object(c):
    pub, priv = _ec_keypair(c, "secp256r1", "py-cert-key", id=b"\x03")
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    import datetime
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "python-pkcs11")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    attrs = decode_x509_certificate(der)
    attrs.update({Attribute.TOKEN: True, Attribute.LABEL: "py-cert", Attribute.ID: b"\x03"})
    c.s.create_object(attrs)
    got = list(c.s.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                Attribute.LABEL: "py-cert"}))
    assert len(got) == 1 and got[0][Attribute.VALUE] == der


@check
def data_object(c):
    c.s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                       Attribute.LABEL: "py-data", Attribute.APPLICATION: "conformance",
                       Attribute.VALUE: b"hello"})
    (obj,) = c.s.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "py-data"})
    assert obj[Attribute.VALUE] == b"hello" and obj[Attribute.APPLICATION] == "conformance"


@check
def token_objects_persist(c):
    """A second session (and a re-opened library handle) sees token objects only."""
    c.s.generate_key(KeyType.AES, 128, label="py-session-only", store=False, capabilities=DATA_KEY)
    with c.token.open() as other:  # the login is per application: shared by this session
        assert list(other.get_objects({Attribute.LABEL: "py-aes"}))
        labels = {o[Attribute.LABEL] for o in other.get_objects({Attribute.TOKEN: True})}
        assert "py-rsa-renamed" in labels and "py-session-only" not in labels


if __name__ == "__main__":
    try:
        ctx = Ctx()
    except Exception as exc:  # the context itself failed: every check fails with its cause
        ctx = None
        import harness
        for name in harness.names():
            print(f"FAIL {name} setup: {type(exc).__name__}: {exc}")
    if ctx is not None:
        main(ctx)
