"""RSA mechanisms called through the registry, cross-checked with `cryptography`
on the key bytes a client would read (CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PUBLIC_KEY_INFO)."""

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from provider import constants as C
from provider.mechanisms import registry
from provider.mechanisms import rsa as family
from provider.mechanisms.params import OaepParams, PssParams

from .mech import impl, obj, rv

SIGN_VERIFY = C.CKF_SIGN | C.CKF_VERIFY
SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
PSS256 = PssParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, 32)


def client_key(pub):
    """The public key a client builds from the attributes it reads."""
    n = int.from_bytes(pub.attrs[C.CKA_MODULUS], "big")
    e = int.from_bytes(pub.attrs[C.CKA_PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


@pytest.fixture(scope="module")
def pair():
    pub, priv = impl(C.CKM_RSA_PKCS_KEY_PAIR_GEN).generate_key_pair(
        None, {C.CKA_MODULUS_BITS: 2048}, {})
    return obj(pub, C.CKO_PUBLIC_KEY), obj(priv, C.CKO_PRIVATE_KEY)


def sign(mech, key, data, param=None, parts=1):
    ctx = impl(mech).sign_init(key, param)
    if not ctx.multipart:
        return ctx.oneshot(data)
    step = max(1, len(data) // parts)
    for i in range(0, len(data), step):
        ctx.update(data[i:i + step])
    return ctx.final()


def verify(mech, key, data, sig, param=None):
    impl(mech).verify_init(key, param).oneshot(data, sig)


# --- CK_MECHANISM_INFO ---------------------------------------------------------------
@pytest.mark.parametrize("mech,flags", [
    (C.CKM_RSA_PKCS_KEY_PAIR_GEN, C.CKF_GENERATE_KEY_PAIR),
    (C.CKM_RSA_PKCS, C.CKF_ENCRYPT | C.CKF_DECRYPT | SIGN_VERIFY | C.CKF_WRAP | C.CKF_UNWRAP),
    (C.CKM_RSA_PKCS_OAEP, C.CKF_ENCRYPT | C.CKF_DECRYPT | C.CKF_WRAP | C.CKF_UNWRAP),
    (C.CKM_RSA_PKCS_PSS, SIGN_VERIFY),
    (C.CKM_SHA1_RSA_PKCS, SIGN_VERIFY), (C.CKM_SHA224_RSA_PKCS, SIGN_VERIFY),
    (C.CKM_SHA256_RSA_PKCS, SIGN_VERIFY), (C.CKM_SHA384_RSA_PKCS, SIGN_VERIFY),
    (C.CKM_SHA512_RSA_PKCS, SIGN_VERIFY), (C.CKM_SHA1_RSA_PKCS_PSS, SIGN_VERIFY),
    (C.CKM_SHA224_RSA_PKCS_PSS, SIGN_VERIFY), (C.CKM_SHA256_RSA_PKCS_PSS, SIGN_VERIFY),
    (C.CKM_SHA384_RSA_PKCS_PSS, SIGN_VERIFY), (C.CKM_SHA512_RSA_PKCS_PSS, SIGN_VERIFY),
])
def test_mechanism_info(mech, flags):
    entry = registry.get(mech)
    assert (entry.flags, entry.min_key, entry.max_key) == (flags, 2048, 4096)


def test_no_raw_rsa():
    assert rv(registry.get, C.CKM_RSA_X_509) == C.CKR_MECHANISM_INVALID


# --- generation -------------------------------------------------------------------------
def test_generated_attributes(pair):
    pub, priv = pair
    assert pub.attrs[C.CKA_KEY_TYPE] == priv.attrs[C.CKA_KEY_TYPE] == C.CKK_RSA
    assert pub.attrs[C.CKA_MODULUS_BITS] == 2048 and len(pub.attrs[C.CKA_MODULUS]) == 256
    assert pub.attrs[C.CKA_PUBLIC_EXPONENT] == b"\x01\x00\x01"
    spki = serialization.load_der_public_key(pub.attrs[C.CKA_PUBLIC_KEY_INFO])
    assert spki.public_numbers() == client_key(pub).public_numbers()
    assert priv.attrs[C.CKA_PUBLIC_KEY_INFO] == pub.attrs[C.CKA_PUBLIC_KEY_INFO]
    for cka in family.PRIVATE_PARTS + (C.CKA_MODULUS, C.CKA_PUBLIC_EXPONENT):
        assert priv.attrs[cka]
    assert C.CKA_PRIVATE_EXPONENT not in pub.attrs


@pytest.mark.parametrize("param,pub,code", [
    (None, {}, C.CKR_TEMPLATE_INCOMPLETE),
    (None, {C.CKA_MODULUS_BITS: 1024}, C.CKR_KEY_SIZE_RANGE),
    (None, {C.CKA_MODULUS_BITS: 8192}, C.CKR_KEY_SIZE_RANGE),
    (None, {C.CKA_MODULUS_BITS: 2048, C.CKA_PUBLIC_EXPONENT: b"\x11"}, C.CKR_ATTRIBUTE_VALUE_INVALID),
    (b"x", {C.CKA_MODULUS_BITS: 2048}, C.CKR_MECHANISM_PARAM_INVALID),
])
def test_generation_refused(param, pub, code):
    assert rv(impl(C.CKM_RSA_PKCS_KEY_PAIR_GEN).generate_key_pair, param, pub, {}) == code


# --- PKCS#1 v1.5 signatures --------------------------------------------------------------
def test_pkcs1_over_digest_info(pair):
    pub, priv = pair
    digest = hashlib.sha256(b"message").digest()
    sig = sign(C.CKM_RSA_PKCS, priv, SHA256_INFO + digest)
    client_key(pub).verify(sig, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    verify(C.CKM_RSA_PKCS, pub, SHA256_INFO + digest, sig)
    # the blinded CRT path gives the same (deterministic) signature as OpenSSL's
    assert family._raw_sign(family._private(priv), SHA256_INFO + digest) == sig


def test_pkcs1_over_raw_bytes(pair):
    pub, priv = pair
    data = hashlib.md5(b"tls").digest() + hashlib.sha1(b"tls").digest()   # TLS 1.0 style, no DigestInfo
    sig = sign(C.CKM_RSA_PKCS, priv, data)
    assert client_key(pub).recover_data_from_signature(sig, padding.PKCS1v15(), None) == data
    verify(C.CKM_RSA_PKCS, pub, data, sig)
    assert rv(verify, C.CKM_RSA_PKCS, pub, data[:-1] + b"\x00", sig) == C.CKR_SIGNATURE_INVALID


def test_pkcs1_lengths(pair):
    pub, priv = pair
    assert len(sign(C.CKM_RSA_PKCS, priv, b"x" * 245)) == 256
    assert rv(sign, C.CKM_RSA_PKCS, priv, b"x" * 246) == C.CKR_DATA_LEN_RANGE
    sig = sign(C.CKM_RSA_PKCS, priv, b"abc")
    assert rv(verify, C.CKM_RSA_PKCS, pub, b"abc", sig[:-1]) == C.CKR_SIGNATURE_LEN_RANGE
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert rv(verify, C.CKM_RSA_PKCS, pub, b"abc", bad) == C.CKR_SIGNATURE_INVALID
    assert rv(impl(C.CKM_RSA_PKCS).sign_init, priv, b"param") == C.CKR_MECHANISM_PARAM_INVALID


@pytest.mark.parametrize("mech,alg", [
    (C.CKM_SHA1_RSA_PKCS, hashes.SHA1), (C.CKM_SHA224_RSA_PKCS, hashes.SHA224),
    (C.CKM_SHA256_RSA_PKCS, hashes.SHA256), (C.CKM_SHA384_RSA_PKCS, hashes.SHA384),
    (C.CKM_SHA512_RSA_PKCS, hashes.SHA512),
])
def test_hashed_pkcs1(pair, mech, alg):
    pub, priv = pair
    data = b"a message in several parts " * 5
    sig = sign(mech, priv, data, parts=4)
    client_key(pub).verify(sig, data, padding.PKCS1v15(), alg())
    verify(mech, pub, data, sig)
    assert rv(verify, mech, pub, data + b"!", sig) == C.CKR_SIGNATURE_INVALID
    assert rv(verify, mech, pub, data, sig + b"\x00") == C.CKR_SIGNATURE_LEN_RANGE


# --- PSS ------------------------------------------------------------------------------------
def test_pss_over_hash(pair):
    pub, priv = pair
    digest = hashlib.sha256(b"message").digest()
    sig = sign(C.CKM_RSA_PKCS_PSS, priv, digest, PSS256)
    client_key(pub).verify(sig, digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32), Prehashed(hashes.SHA256()))
    verify(C.CKM_RSA_PKCS_PSS, pub, digest, sig, PSS256)
    assert rv(verify, C.CKM_RSA_PKCS_PSS, pub, digest[::-1], sig, PSS256) == C.CKR_SIGNATURE_INVALID
    assert rv(verify, C.CKM_RSA_PKCS_PSS, pub, digest, sig[1:], PSS256) == C.CKR_SIGNATURE_LEN_RANGE
    assert rv(sign, C.CKM_RSA_PKCS_PSS, priv, digest + b"x", PSS256) == C.CKR_DATA_LEN_RANGE
    assert rv(verify, C.CKM_RSA_PKCS_PSS, pub, digest[:20], sig, PSS256) == C.CKR_DATA_LEN_RANGE


@pytest.mark.parametrize("mech,hash_mech,mgf,alg", [
    (C.CKM_SHA1_RSA_PKCS_PSS, C.CKM_SHA_1, C.CKG_MGF1_SHA1, hashes.SHA1),
    (C.CKM_SHA224_RSA_PKCS_PSS, C.CKM_SHA224, C.CKG_MGF1_SHA224, hashes.SHA224),
    (C.CKM_SHA256_RSA_PKCS_PSS, C.CKM_SHA256, C.CKG_MGF1_SHA256, hashes.SHA256),
    (C.CKM_SHA384_RSA_PKCS_PSS, C.CKM_SHA384, C.CKG_MGF1_SHA384, hashes.SHA384),
    (C.CKM_SHA512_RSA_PKCS_PSS, C.CKM_SHA512, C.CKG_MGF1_SHA512, hashes.SHA512),
])
def test_hashed_pss(pair, mech, hash_mech, mgf, alg):
    pub, priv = pair
    param = PssParams(hash_mech, mgf, alg.digest_size)
    data = b"multi-part PSS input " * 7
    sig = sign(mech, priv, data, param, parts=3)
    client_key(pub).verify(sig, data, padding.PSS(padding.MGF1(alg()), alg.digest_size), alg())
    verify(mech, pub, data, sig, param)
    assert rv(verify, mech, pub, data[1:], sig, param) == C.CKR_SIGNATURE_INVALID


@pytest.mark.parametrize("mech,param", [
    (C.CKM_RSA_PKCS_PSS, None),
    (C.CKM_RSA_PKCS_PSS, b"raw"),
    (C.CKM_RSA_PKCS_PSS, PssParams(C.CKM_MD5, C.CKG_MGF1_SHA256, 32)),
    (C.CKM_RSA_PKCS_PSS, PssParams(C.CKM_SHA256, 0x99, 32)),
    (C.CKM_RSA_PKCS_PSS, PssParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, 256 - 32 - 1)),
    (C.CKM_RSA_PKCS_PSS, PssParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, -1)),
    (C.CKM_SHA256_RSA_PKCS_PSS, PssParams(C.CKM_SHA_1, C.CKG_MGF1_SHA1, 20)),
])
def test_bad_pss_params(pair, mech, param):
    pub, priv = pair
    assert rv(impl(mech).sign_init, priv, param) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(impl(mech).verify_init, pub, param) == C.CKR_MECHANISM_PARAM_INVALID


def test_largest_pss_salt(pair):
    pub, priv = pair
    param = PssParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, 256 - 32 - 2)
    digest = hashlib.sha256(b"m").digest()
    verify(C.CKM_RSA_PKCS_PSS, pub, digest, sign(C.CKM_RSA_PKCS_PSS, priv, digest, param), param)


# --- encryption and wrapping --------------------------------------------------------------
def crypt(mech, key, data, param=None, op="encrypt_init"):
    return getattr(impl(mech), op)(key, param).oneshot(data)


def test_pkcs1_encryption(pair):
    pub, priv = pair
    ct = crypt(C.CKM_RSA_PKCS, pub, b"secret")
    assert len(ct) == 256 and crypt(C.CKM_RSA_PKCS, priv, ct, op="decrypt_init") == b"secret"
    theirs = client_key(pub).encrypt(b"from a client", padding.PKCS1v15())
    assert crypt(C.CKM_RSA_PKCS, priv, theirs, op="decrypt_init") == b"from a client"
    assert rv(crypt, C.CKM_RSA_PKCS, pub, b"x" * 246) == C.CKR_DATA_LEN_RANGE
    assert rv(crypt, C.CKM_RSA_PKCS, priv, ct[1:], None, "decrypt_init") == C.CKR_ENCRYPTED_DATA_LEN_RANGE


def oaep(hash_mech=C.CKM_SHA256, mgf=C.CKG_MGF1_SHA256, label=b"", source=C.CKZ_DATA_SPECIFIED):
    return OaepParams(hash_mech, mgf, source, label)


def test_oaep_round_trip_with_label(pair):
    pub, priv = pair
    param = oaep(label=b"the label")
    ct = crypt(C.CKM_RSA_PKCS_OAEP, pub, b"secret", param)
    assert crypt(C.CKM_RSA_PKCS_OAEP, priv, ct, param, "decrypt_init") == b"secret"
    # a client decrypting with the same parameters gets it back; another label fails
    priv_key = family._private(priv)
    pad = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"the label")
    assert priv_key.decrypt(ct, pad) == b"secret"
    assert rv(crypt, C.CKM_RSA_PKCS_OAEP, priv, ct, oaep(label=b"other"), "decrypt_init") == \
        C.CKR_ENCRYPTED_DATA_INVALID
    # hash and MGF hash may differ
    mixed = oaep(C.CKM_SHA512, C.CKG_MGF1_SHA1)
    theirs = client_key(pub).encrypt(b"mixed", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA512(), None))
    assert crypt(C.CKM_RSA_PKCS_OAEP, priv, theirs, mixed, "decrypt_init") == b"mixed"
    assert len(crypt(C.CKM_RSA_PKCS_OAEP, pub, b"x" * (256 - 66), param)) == 256
    assert rv(crypt, C.CKM_RSA_PKCS_OAEP, pub, b"x" * (256 - 65), param) == C.CKR_DATA_LEN_RANGE


@pytest.mark.parametrize("param", [
    None, oaep(hash_mech=C.CKM_MD5), oaep(mgf=0x77), oaep(source=2), oaep(source=0, label=b"x"),
])
def test_bad_oaep_params(pair, param):
    pub, priv = pair
    assert rv(impl(C.CKM_RSA_PKCS_OAEP).encrypt_init, pub, param) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(impl(C.CKM_RSA_PKCS_OAEP).decrypt_init, priv, param) == C.CKR_MECHANISM_PARAM_INVALID


@pytest.mark.parametrize("mech,param", [(C.CKM_RSA_PKCS, None), (C.CKM_RSA_PKCS_OAEP, oaep(label=b"w"))])
def test_wrap_unwrap(pair, mech, param):
    pub, priv = pair
    secret = bytes(range(32))
    wrapped = impl(mech).wrap(pub, param, secret)
    assert impl(mech).unwrap(priv, param, wrapped) == secret
    assert rv(impl(mech).wrap, pub, param, b"k" * 250) == C.CKR_KEY_NOT_WRAPPABLE
    assert rv(impl(mech).unwrap, priv, param, wrapped[:-1]) == C.CKR_ENCRYPTED_DATA_LEN_RANGE


def test_wrong_key_class_or_type(pair):
    pub, priv = pair
    assert rv(impl(C.CKM_SHA256_RSA_PKCS).sign_init, pub, None) == C.CKR_KEY_TYPE_INCONSISTENT
    assert rv(impl(C.CKM_RSA_PKCS).encrypt_init, priv, None) == C.CKR_KEY_TYPE_INCONSISTENT
    ec_like = obj({C.CKA_KEY_TYPE: C.CKK_EC}, C.CKO_PRIVATE_KEY)
    assert rv(impl(C.CKM_SHA256_RSA_PKCS).sign_init, ec_like, None) == C.CKR_KEY_TYPE_INCONSISTENT


# --- the key type -------------------------------------------------------------------------
def attrs_of(key: rsa.RSAPrivateKey) -> dict:
    n = key.private_numbers()
    b = family.to_bytes
    return {C.CKA_MODULUS: b(n.public_numbers.n), C.CKA_PUBLIC_EXPONENT: b(n.public_numbers.e),
            C.CKA_PRIVATE_EXPONENT: b(n.d), C.CKA_PRIME_1: b(n.p), C.CKA_PRIME_2: b(n.q),
            C.CKA_EXPONENT_1: b(n.dmp1), C.CKA_EXPONENT_2: b(n.dmq1), C.CKA_COEFFICIENT: b(n.iqmp)}


def test_complete_public(pair):
    pub, _ = pair
    given = {C.CKA_MODULUS: pub.attrs[C.CKA_MODULUS], C.CKA_PUBLIC_EXPONENT: pub.attrs[C.CKA_PUBLIC_EXPONENT]}
    made = registry.key_type(C.CKK_RSA).complete(C.CKO_PUBLIC_KEY, given)
    assert made == {C.CKA_MODULUS_BITS: 2048, C.CKA_PUBLIC_KEY_INFO: pub.attrs[C.CKA_PUBLIC_KEY_INFO]}
    assert rv(registry.key_type(C.CKK_RSA).complete, C.CKO_PUBLIC_KEY,
              {C.CKA_MODULUS: pub.attrs[C.CKA_MODULUS]}) == C.CKR_TEMPLATE_INCOMPLETE


def test_complete_private_recovers_crt(pair):
    pub, priv = pair
    handler = registry.key_type(C.CKK_RSA)
    full = {cka: priv.attrs[cka] for cka in attrs_of(family._private(priv))}
    bare = {cka: full[cka] for cka in (C.CKA_MODULUS, C.CKA_PUBLIC_EXPONENT, C.CKA_PRIVATE_EXPONENT)}
    made = handler.complete(C.CKO_PRIVATE_KEY, bare)
    assert {made[C.CKA_PRIME_1], made[C.CKA_PRIME_2]} == {full[C.CKA_PRIME_1], full[C.CKA_PRIME_2]}
    assert made[C.CKA_PUBLIC_KEY_INFO] == pub.attrs[C.CKA_PUBLIC_KEY_INFO]
    # the imported key signs like the original
    imported = obj({C.CKA_KEY_TYPE: C.CKK_RSA, **bare, **made}, C.CKO_PRIVATE_KEY)
    verify(C.CKM_SHA256_RSA_PKCS, pub, b"m", sign(C.CKM_SHA256_RSA_PKCS, imported, b"m"))
    # no public exponent: recovered from the primes
    no_e = {cka: v for cka, v in full.items() if cka != C.CKA_PUBLIC_EXPONENT}
    assert handler.complete(C.CKO_PRIVATE_KEY, no_e)[C.CKA_PUBLIC_EXPONENT] == b"\x01\x00\x01"
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, {C.CKA_MODULUS: full[C.CKA_MODULUS]}) == \
        C.CKR_TEMPLATE_INCOMPLETE
    broken = {**full, C.CKA_COEFFICIENT: b"\x05"}
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, broken) == C.CKR_ATTRIBUTE_VALUE_INVALID
    wrong_d = {**bare, C.CKA_PRIVATE_EXPONENT: b"\x03"}
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, wrong_d) == C.CKR_ATTRIBUTE_VALUE_INVALID


def test_small_imported_key_is_stored_but_not_used():
    small = rsa.generate_private_key(65537, 1024)
    attrs = attrs_of(small)
    made = registry.key_type(C.CKK_RSA).complete(C.CKO_PRIVATE_KEY, attrs)
    key = obj({C.CKA_KEY_TYPE: C.CKK_RSA, **attrs, **made}, C.CKO_PRIVATE_KEY)
    assert rv(impl(C.CKM_SHA256_RSA_PKCS).sign_init, key, None) == C.CKR_KEY_SIZE_RANGE


def test_pkcs8_round_trip(pair):
    _, priv = pair
    handler = registry.key_type(C.CKK_RSA)
    der = handler.to_pkcs8(priv.attrs)
    loaded = serialization.load_der_private_key(der, None)
    assert loaded.private_numbers() == family._private(priv).private_numbers()
    back = handler.from_pkcs8(der)
    assert back[C.CKA_KEY_TYPE] == C.CKK_RSA
    assert all(back[cka] == priv.attrs[cka] for cka in attrs_of(loaded))
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert rv(handler.from_pkcs8, other) == C.CKR_WRAPPED_KEY_INVALID
    assert rv(handler.from_pkcs8, b"\x30\x03junk") == C.CKR_WRAPPED_KEY_INVALID
