"""PyKCS11 as a client (a SWIG wrapper, so a different calling layer than python-pkcs11):
token and mechanism info, session state, key generation, sign/verify, encrypt/decrypt
(single- and multi-part), wrap/unwrap, ECDH, attributes, objects and PINs. Results are checked
with `cryptography`. Run by conformance/test_pykcs11.py; prints PASS/FAIL/SKIP lines.
"""

import hashlib
import os

import PyKCS11 as P
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from harness import Skip, check, env, main

DATA = os.urandom(300)


class Ctx:
    def __init__(self):
        path, label, self.pin, self.so_pin = env()
        self.lib = P.PyKCS11Lib()
        self.lib.load(path)
        self.slot = next(s for s in self.lib.getSlotList(tokenPresent=True)
                         if self.lib.getTokenInfo(s).label.strip() == label)
        self.s = self.lib.openSession(self.slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
        self.mechs = set(self.lib.getMechanismList(self.slot))
        self.k = {}

    def need(self, *names):
        missing = [n for n in names if n not in self.mechs]
        if missing:
            raise Skip(f"module does not list {', '.join(missing)}")

    def attr(self, obj, *types):
        return self.s.getAttributeValue(obj, list(types), allAsBinary=True)


def b(x):
    return bytes(x)


@check
def token_and_mechanism_info(c):
    info = c.lib.getInfo()
    assert info.cryptokiVersion[0] >= 2
    tok = c.lib.getTokenInfo(c.slot)
    assert "CKF_TOKEN_INITIALIZED" in tok.flags2text() and "CKF_USER_PIN_INITIALIZED" in \
        tok.flags2text(), tok.flags2text()
    assert {"CKM_RSA_PKCS", "CKM_ECDSA", "CKM_AES_CBC", "CKM_SHA256"} <= c.mechs, c.mechs
    mi = c.lib.getMechanismInfo(c.slot, "CKM_RSA_PKCS_KEY_PAIR_GEN")
    assert mi.ulMinKeySize <= 2048 <= mi.ulMaxKeySize
    assert "CKF_GENERATE_KEY_PAIR" in mi.flags2text()


@check
def session_state_and_login(c):
    assert c.s.getSessionInfo().state == P.CKS_RW_PUBLIC_SESSION
    try:
        c.s.login("000000")
        raise AssertionError("wrong PIN accepted")
    except P.PyKCS11Error as exc:
        assert exc.value == P.CKR_PIN_INCORRECT, exc
    c.s.login(c.pin)
    assert c.s.getSessionInfo().state == P.CKS_RW_USER_FUNCTIONS


@check
def digest_and_random(c):
    assert b(c.s.digest(DATA, P.Mechanism(P.CKM_SHA256))) == hashlib.sha256(DATA).digest()
    r1, r2 = b(c.s.generateRandom(32)), b(c.s.generateRandom(32))
    assert len(r1) == 32 and r1 != r2


@check
def rsa_sign_pkcs1_and_pss(c):
    pub_t = [(P.CKA_TOKEN, True), (P.CKA_VERIFY, True), (P.CKA_ENCRYPT, True),
             (P.CKA_MODULUS_BITS, 2048), (P.CKA_PUBLIC_EXPONENT, (1, 0, 1)),
             (P.CKA_LABEL, "pyk-rsa"), (P.CKA_ID, (0x21,))]
    priv_t = [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True), (P.CKA_SIGN, True),
              (P.CKA_DECRYPT, True), (P.CKA_SENSITIVE, True), (P.CKA_LABEL, "pyk-rsa"),
              (P.CKA_ID, (0x21,))]
    pub, priv = c.s.generateKeyPair(pub_t, priv_t, P.MechanismRSAGENERATEKEYPAIR)
    n, e = c.attr(pub, P.CKA_MODULUS, P.CKA_PUBLIC_EXPONENT)
    key = rsa.RSAPublicNumbers(int.from_bytes(b(e), "big"), int.from_bytes(b(n), "big"))
    c.k["rsa"] = (pub, priv, key.public_key())
    sig = b(c.s.sign(priv, DATA, P.Mechanism(P.CKM_SHA256_RSA_PKCS)))
    c.k["rsa"][2].verify(sig, DATA, padding.PKCS1v15(), hashes.SHA256())
    assert c.s.verify(pub, DATA, sig, P.Mechanism(P.CKM_SHA256_RSA_PKCS))
    pss = P.RSA_PSS_Mechanism(P.CKM_SHA256_RSA_PKCS_PSS, P.CKM_SHA256, P.CKG_MGF1_SHA256, 32)
    sig = b(c.s.sign(priv, DATA, pss))
    c.k["rsa"][2].verify(sig, DATA, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                         hashes.SHA256())


@check
def rsa_oaep_decrypt(c):
    pub, priv, cpub = c.k["rsa"]
    msg = DATA[:32]
    ct = cpub.encrypt(msg, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    mech = P.RSAOAEPMechanism(P.CKM_SHA_1, P.CKG_MGF1_SHA1)
    assert b(c.s.decrypt(priv, ct, mech)) == msg


@check
def ecdsa_p256(c):
    params = bytes.fromhex("06082a8648ce3d030107")
    pub, priv = c.s.generateKeyPair(
        [(P.CKA_TOKEN, True), (P.CKA_VERIFY, True), (P.CKA_EC_PARAMS, params),
         (P.CKA_LABEL, "pyk-ec"), (P.CKA_ID, (0x22,))],
        [(P.CKA_TOKEN, True), (P.CKA_PRIVATE, True), (P.CKA_SIGN, True), (P.CKA_DERIVE, True),
         (P.CKA_LABEL, "pyk-ec"), (P.CKA_ID, (0x22,))], P.MechanismECGENERATEKEYPAIR)
    (point,) = c.attr(pub, P.CKA_EC_POINT)
    point = b(point)
    point = point[2:] if point[1] == len(point) - 2 else point  # DER OCTET STRING
    cpub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    c.k["ec"] = (pub, priv, cpub)
    raw = b(c.s.sign(priv, hashlib.sha256(DATA).digest(), P.Mechanism(P.CKM_ECDSA)))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    cpub.verify(der, DATA, ec.ECDSA(hashes.SHA256()))


@check
def ecdh_derive(c):
    c.need("CKM_ECDH1_DERIVE")
    _, priv, cpub = c.k["ec"]
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    tmpl = [(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_GENERIC_SECRET),
            (P.CKA_VALUE_LEN, 32), (P.CKA_SENSITIVE, False), (P.CKA_EXTRACTABLE, True),
            (P.CKA_TOKEN, False)]
    key = c.s.deriveKey(priv, tmpl, P.ECDH1_DERIVE_Mechanism(point))
    (value,) = c.attr(key, P.CKA_VALUE)
    assert b(value) == peer.exchange(ec.ECDH(), cpub)


@check
def eddsa(c):
    c.need("CKM_EC_EDWARDS_KEY_PAIR_GEN", "CKM_EDDSA")
    params = bytes.fromhex("06032b6570")  # OID 1.3.101.112
    pub, priv = c.s.generateKeyPair(
        [(P.CKA_TOKEN, False), (P.CKA_VERIFY, True), (P.CKA_EC_PARAMS, params)],
        [(P.CKA_TOKEN, False), (P.CKA_SIGN, True)],
        P.Mechanism(P.CKM_EC_EDWARDS_KEY_PAIR_GEN))
    sig = b(c.s.sign(priv, DATA, P.EDDSA_Mechanism()))
    (point,) = c.attr(pub, P.CKA_EC_POINT)
    point = b(point)
    raw = point[2:] if len(point) == 34 else point
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    Ed25519PublicKey.from_public_bytes(raw).verify(sig, DATA)


@check
def aes_gcm_ctr_and_multipart(c):
    raw = os.urandom(32)
    key = c.s.createObject([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_KEY_TYPE, P.CKK_AES),
                            (P.CKA_VALUE, raw), (P.CKA_ENCRYPT, True), (P.CKA_DECRYPT, True),
                            (P.CKA_TOKEN, False), (P.CKA_LABEL, "pyk-aes")])
    iv = os.urandom(12)
    ct = b(c.s.encrypt(key, DATA, P.AES_GCM_Mechanism(iv, b"aad", 128)))
    assert ct == AESGCM(raw).encrypt(iv, DATA, b"aad")
    assert b(c.s.decrypt(key, ct, P.AES_GCM_Mechanism(iv, b"aad", 128))) == DATA
    if "CKM_AES_CTR" in c.mechs:
        ctr = P.AES_CTR_Mechanism(128, os.urandom(16))
        assert b(c.s.decrypt(key, c.s.encrypt(key, DATA, ctr), ctr)) == DATA
    cbc = P.Mechanism(P.CKM_AES_CBC_PAD, os.urandom(16))
    c.s.encryptInit(cbc, key)
    parts = b(c.s.encryptUpdate(DATA[:100])) + b(c.s.encryptUpdate(DATA[100:]))
    parts += b(c.s.encryptFinal())
    assert b(c.s.decrypt(key, parts, cbc)) == DATA


@check
def aes_wrap_unwrap(c):
    c.need("CKM_AES_KEY_WRAP")
    kek = c.s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_VALUE_LEN, 32),
                           (P.CKA_WRAP, True), (P.CKA_UNWRAP, True), (P.CKA_TOKEN, False)])
    tgt = c.s.generateKey([(P.CKA_CLASS, P.CKO_SECRET_KEY), (P.CKA_VALUE_LEN, 16),
                           (P.CKA_EXTRACTABLE, True), (P.CKA_ENCRYPT, True),
                           (P.CKA_TOKEN, False)])
    mech = P.Mechanism(P.CKM_AES_KEY_WRAP)
    wrapped = b(c.s.wrapKey(kek, tgt, mech))
    assert len(wrapped) == 24
    new = c.s.unwrapKey(kek, wrapped, [(P.CKA_CLASS, P.CKO_SECRET_KEY),
                                       (P.CKA_KEY_TYPE, P.CKK_AES), (P.CKA_ENCRYPT, True),
                                       (P.CKA_TOKEN, False)], mech)
    ecb = P.Mechanism(P.CKM_AES_ECB)
    assert b(c.s.encrypt(new, DATA[:32], ecb)) == b(c.s.encrypt(tgt, DATA[:32], ecb))


@check
def attributes_find_copy_destroy(c):
    _, priv, _ = c.k["rsa"]
    c.s.setAttributeValue(priv, [(P.CKA_LABEL, "pyk-rsa-2")])
    found = c.s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, "pyk-rsa-2")])
    assert len(found) == 1
    sens, extr = c.s.getAttributeValue(found[0], [P.CKA_SENSITIVE, P.CKA_EXTRACTABLE])
    assert sens is True and extr is False, (sens, extr)
    # PyKCS11 turns CKR_ATTRIBUTE_SENSITIVE (value length CK_UNAVAILABLE_INFORMATION) into None
    (exponent,) = c.s.getAttributeValue(found[0], [P.CKA_PRIVATE_EXPONENT])
    assert exponent is None, "sensitive CKA_PRIVATE_EXPONENT readable"
    data = c.s.createObject([(P.CKA_CLASS, P.CKO_DATA), (P.CKA_TOKEN, True),
                             (P.CKA_LABEL, "pyk-data"), (P.CKA_VALUE, b"payload")])
    c.s.destroyObject(data)
    assert not c.s.findObjects([(P.CKA_LABEL, "pyk-data")])


@check
def certificate_object(c):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    import datetime
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pykcs11")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(9).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    subj = name.public_bytes()
    c.s.createObject([(P.CKA_CLASS, P.CKO_CERTIFICATE), (P.CKA_CERTIFICATE_TYPE, P.CKC_X_509),
                      (P.CKA_TOKEN, True), (P.CKA_LABEL, "pyk-cert"), (P.CKA_ID, (0x23,)),
                      (P.CKA_SUBJECT, subj), (P.CKA_VALUE, der)])
    (obj,) = c.s.findObjects([(P.CKA_CLASS, P.CKO_CERTIFICATE), (P.CKA_LABEL, "pyk-cert")])
    (value,) = c.attr(obj, P.CKA_VALUE)
    assert b(value) == der


@check
def change_pin_and_logout(c):
    c.s.setPin(c.pin, "999999")
    c.s.logout()
    assert c.s.getSessionInfo().state == P.CKS_RW_PUBLIC_SESSION
    c.s.login("999999")
    c.s.setPin("999999", c.pin)
    c.s.logout()
    c.s.login(c.pin)


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
