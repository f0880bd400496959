"""EC (ECDSA, ECDH) and EdDSA mechanisms called through the registry, cross-checked
with `cryptography` on the bytes a client would read (CKA_EC_POINT, CKA_PUBLIC_KEY_INFO)."""

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from provider import constants as C
from provider.mechanisms import registry
from provider.mechanisms.curves import der_tlv, oid_der
from provider.mechanisms.params import Ecdh1DeriveParams, EddsaParams

from .mech import impl, obj, rv

EC_FLAGS = C.CKF_EC_F_P | C.CKF_EC_NAMEDCURVE | C.CKF_EC_UNCOMPRESS | C.CKF_EC_CURVENAME
SIGN_VERIFY = C.CKF_SIGN | C.CKF_VERIFY
P256, P384, P521 = oid_der("1.2.840.10045.3.1.7"), oid_der("1.3.132.0.34"), oid_der("1.3.132.0.35")
CURVES = {P256: (ec.SECP256R1, 32), P384: (ec.SECP384R1, 48), P521: (ec.SECP521R1, 66)}
ED25519, ED448 = oid_der("1.3.101.112"), oid_der("1.3.101.113")


def printable(name: str) -> bytes:
    return der_tlv(0x13, name.encode())


def gen(mech, params):
    pub, priv = impl(mech).generate_key_pair(None, {C.CKA_EC_PARAMS: params}, {})
    return obj(pub, C.CKO_PUBLIC_KEY), obj(priv, C.CKO_PRIVATE_KEY)


def ec_pair(params=P256):
    return gen(C.CKM_EC_KEY_PAIR_GEN, params)


def unwrap(point: bytes) -> bytes:
    """A client's reading of CKA_EC_POINT: a DER OCTET STRING."""
    assert point[0] == 0x04
    if point[1] & 0x80:
        return point[2 + (point[1] & 0x7F):]
    return point[2:]


def client_ec(pub, params=P256):
    return ec.EllipticCurvePublicKey.from_encoded_point(CURVES[params][0](), unwrap(pub.attrs[C.CKA_EC_POINT]))


def dss(sig: bytes) -> bytes:
    half = len(sig) // 2
    return encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))


def sign(mech, key, data, param=None):
    ctx = impl(mech).sign_init(key, param)
    if not ctx.multipart:
        return ctx.oneshot(data)
    for i in range(0, len(data), 7):
        ctx.update(data[i:i + 7])
    return ctx.final()


def verify(mech, key, data, sig, param=None):
    impl(mech).verify_init(key, param).oneshot(data, sig)


# --- CK_MECHANISM_INFO ---------------------------------------------------------------
@pytest.mark.parametrize("mech,flags,sizes", [
    (C.CKM_EC_KEY_PAIR_GEN, C.CKF_GENERATE_KEY_PAIR | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA_SHA1, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA_SHA224, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA_SHA256, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA_SHA384, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDSA_SHA512, SIGN_VERIFY | EC_FLAGS, (256, 521)),
    (C.CKM_ECDH1_DERIVE, C.CKF_DERIVE | EC_FLAGS, (256, 521)),
    (C.CKM_ECDH1_COFACTOR_DERIVE, C.CKF_DERIVE | EC_FLAGS, (256, 521)),
    (C.CKM_EC_EDWARDS_KEY_PAIR_GEN, C.CKF_GENERATE_KEY_PAIR, (255, 448)),
    (C.CKM_EDDSA, SIGN_VERIFY, (255, 448)),
])
def test_mechanism_info(mech, flags, sizes):
    entry = registry.get(mech)
    assert (entry.flags, (entry.min_key, entry.max_key)) == (flags, sizes)


# --- EC generation ----------------------------------------------------------------------
@pytest.mark.parametrize("params,oid", [
    (P256, P256), (printable("prime256v1"), P256), (P384, P384), (printable("secp384r1"), P384),
    (P521, P521), (printable("secp521r1"), P521),
])
def test_ec_generation(params, oid):
    pub, priv = ec_pair(params)
    make, size = CURVES[oid]
    point = pub.attrs[C.CKA_EC_POINT]
    raw = unwrap(point)
    assert len(raw) == 1 + 2 * size and raw[0] == 0x04
    assert point[:3] == (b"\x04\x81\x85" if size == 66 else bytes([4, len(raw), 4]))
    assert pub.attrs[C.CKA_EC_PARAMS] == priv.attrs[C.CKA_EC_PARAMS] == params
    assert priv.attrs[C.CKA_EC_POINT] == point and len(priv.attrs[C.CKA_VALUE]) == size
    assert pub.attrs[C.CKA_KEY_TYPE] == priv.attrs[C.CKA_KEY_TYPE] == C.CKK_EC
    scalar = int.from_bytes(priv.attrs[C.CKA_VALUE], "big")
    assert ec.derive_private_key(scalar, make()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint) == raw
    spki = serialization.load_der_public_key(pub.attrs[C.CKA_PUBLIC_KEY_INFO])
    assert spki.public_numbers() == client_ec(pub, oid).public_numbers()


@pytest.mark.parametrize("params,code", [
    (None, C.CKR_TEMPLATE_INCOMPLETE),
    (oid_der("1.3.132.0.10"), C.CKR_CURVE_NOT_SUPPORTED),        # secp256k1
    (printable("brainpoolP256r1"), C.CKR_CURVE_NOT_SUPPORTED),
    (ED25519, C.CKR_CURVE_NOT_SUPPORTED),
    (b"\x30\x03\x02\x01\x01", C.CKR_CURVE_NOT_SUPPORTED),        # explicit parameters
    (b"\x01\x02junk", C.CKR_ATTRIBUTE_VALUE_INVALID),
])
def test_ec_generation_refused(params, code):
    template = {} if params is None else {C.CKA_EC_PARAMS: params}
    assert rv(impl(C.CKM_EC_KEY_PAIR_GEN).generate_key_pair, None, template, {}) == code


# --- ECDSA --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs():
    return {params: ec_pair(params) for params in CURVES}


@pytest.mark.parametrize("params", list(CURVES))
@pytest.mark.parametrize("alg", [hashes.SHA1, hashes.SHA256, hashes.SHA384, hashes.SHA512])
def test_ecdsa_over_hash(pairs, params, alg):
    """Any hash on any curve: OpenSSL's own truncation rules agree with ours."""
    pub, priv = pairs[params]
    digest = hashes.Hash(alg())
    digest.update(b"message")
    digest = digest.finalize()
    sig = sign(C.CKM_ECDSA, priv, digest)
    assert len(sig) == 2 * CURVES[params][1]
    client_ec(pub, params).verify(dss(sig), digest, ec.ECDSA(Prehashed(alg())))
    verify(C.CKM_ECDSA, pub, digest, sig)


def test_ecdsa_truncates_long_input(pairs):
    pub, priv = pairs[P256]
    data = hashlib.sha256(b"m").digest() + b"ignored tail bits" * 3      # 83 bytes
    sig = sign(C.CKM_ECDSA, priv, data)
    client_ec(pub).verify(dss(sig), data[:32], ec.ECDSA(Prehashed(hashes.SHA256())))
    verify(C.CKM_ECDSA, pub, data[:32] + b"anything else", sig)
    # P-521: 521 leftmost bits of a 80-byte input; what follows does not matter
    pub, priv = pairs[P521]
    data = bytes(range(80))
    sig = sign(C.CKM_ECDSA, priv, data)
    verify(C.CKM_ECDSA, pub, data[:65] + bytes([data[65] & 0x80 | 0x7F]) + b"\xff" * 14, sig)
    assert rv(verify, C.CKM_ECDSA, pub, data[:65] + bytes([data[65] ^ 0x80]) + data[66:], sig) == \
        C.CKR_SIGNATURE_INVALID


def test_ecdsa_short_input_is_an_integer(pairs):
    pub, priv = pairs[P384]
    data = b"0123456789"
    sig = sign(C.CKM_ECDSA, priv, data)
    client_ec(pub, P384).verify(dss(sig), data.rjust(48, b"\x00"), ec.ECDSA(Prehashed(hashes.SHA384())))


@pytest.mark.parametrize("mech,alg", [
    (C.CKM_ECDSA_SHA1, hashes.SHA1), (C.CKM_ECDSA_SHA224, hashes.SHA224),
    (C.CKM_ECDSA_SHA256, hashes.SHA256), (C.CKM_ECDSA_SHA384, hashes.SHA384),
    (C.CKM_ECDSA_SHA512, hashes.SHA512),
])
@pytest.mark.parametrize("params", [P256, P521])
def test_hashed_ecdsa(pairs, mech, alg, params):
    pub, priv = pairs[params]
    data = b"several parts of a message " * 4
    sig = sign(mech, priv, data)
    client_ec(pub, params).verify(dss(sig), data, ec.ECDSA(alg()))
    verify(mech, pub, data, sig)
    assert rv(verify, mech, pub, data + b".", sig) == C.CKR_SIGNATURE_INVALID


def test_ecdsa_rejections(pairs):
    pub, priv = pairs[P256]
    digest = hashlib.sha256(b"x").digest()
    sig = sign(C.CKM_ECDSA, priv, digest)
    bad = sig[:-1] + bytes([sig[-1] ^ 1])
    assert rv(verify, C.CKM_ECDSA, pub, digest, bad) == C.CKR_SIGNATURE_INVALID
    assert rv(verify, C.CKM_ECDSA, pub, digest, sig + b"\x00") == C.CKR_SIGNATURE_LEN_RANGE
    assert rv(verify, C.CKM_ECDSA, pub, digest, dss(sig)) == C.CKR_SIGNATURE_LEN_RANGE
    assert rv(verify, C.CKM_ECDSA_SHA256, pub, b"x", sig[:63]) == C.CKR_SIGNATURE_LEN_RANGE
    assert rv(impl(C.CKM_ECDSA).sign_init, priv, b"p") == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(impl(C.CKM_ECDSA).sign_init, pub, None) == C.CKR_KEY_TYPE_INCONSISTENT
    assert rv(impl(C.CKM_ECDSA).verify_init, priv, None) == C.CKR_KEY_TYPE_INCONSISTENT
    ed_pub, _ = gen(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, ED25519)
    assert rv(impl(C.CKM_ECDSA).verify_init, ed_pub, None) == C.CKR_KEY_TYPE_INCONSISTENT


# --- ECDH -----------------------------------------------------------------------------------
def derive(base, peer_point, template, kdf=C.CKD_NULL, shared=b"", mech=C.CKM_ECDH1_DERIVE):
    return impl(mech).derive(base, Ecdh1DeriveParams(kdf, shared, peer_point), template, None)[C.CKA_VALUE]


GENERIC = {C.CKA_KEY_TYPE: C.CKK_GENERIC_SECRET}


@pytest.fixture(scope="module")
def two():
    return ec_pair(), ec_pair()


def shared_secret(a_priv, b_pub):
    scalar = int.from_bytes(a_priv.attrs[C.CKA_VALUE], "big")
    return ec.derive_private_key(scalar, ec.SECP256R1()).exchange(ec.ECDH(), client_ec(b_pub))


def test_ecdh_agrees(two):
    (pa, ka), (pb, kb) = two
    expected = shared_secret(ka, pb)
    a = derive(ka, pb.attrs[C.CKA_EC_POINT], GENERIC)                 # DER-wrapped point
    b = derive(kb, unwrap(pa.attrs[C.CKA_EC_POINT]), GENERIC)         # raw point
    assert a == b == expected
    assert derive(ka, pb.attrs[C.CKA_EC_POINT], GENERIC, mech=C.CKM_ECDH1_COFACTOR_DERIVE) == expected
    # compressed peer points are accepted too
    compressed = client_ec(pb).public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    assert derive(ka, compressed, GENERIC) == expected


def test_ecdh_lengths(two):
    (_, ka), (pb, _) = two
    point, full = pb.attrs[C.CKA_EC_POINT], shared_secret(ka, pb)
    assert derive(ka, point, {**GENERIC, C.CKA_VALUE_LEN: 16}) == full[-16:]
    assert derive(ka, point, {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 24}) == full[-24:]
    assert derive(ka, point, {C.CKA_KEY_TYPE: C.CKK_DES3}) == full[-24:]
    assert rv(derive, ka, point, {C.CKA_KEY_TYPE: C.CKK_AES}) == C.CKR_TEMPLATE_INCOMPLETE
    assert rv(derive, ka, point, {**GENERIC, C.CKA_VALUE_LEN: 33}) == C.CKR_ATTRIBUTE_VALUE_INVALID
    assert rv(derive, ka, point, {**GENERIC, C.CKA_VALUE_LEN: 0}) == C.CKR_ATTRIBUTE_VALUE_INVALID


@pytest.mark.parametrize("kdf,alg", [
    (C.CKD_SHA1_KDF, hashes.SHA1), (C.CKD_SHA224_KDF, hashes.SHA224), (C.CKD_SHA256_KDF, hashes.SHA256),
    (C.CKD_SHA384_KDF, hashes.SHA384), (C.CKD_SHA512_KDF, hashes.SHA512),
])
@pytest.mark.parametrize("shared", [b"", b"other info"])
def test_ecdh_x963_kdf(two, kdf, alg, shared):
    (pa, ka), (pb, kb) = two
    template = {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 32}
    ours = derive(ka, pb.attrs[C.CKA_EC_POINT], template, kdf, shared)
    assert ours == derive(kb, pa.attrs[C.CKA_EC_POINT], template, kdf, shared)
    assert ours == X963KDF(alg(), 32, shared or None).derive(shared_secret(ka, pb))
    long = derive(ka, pb.attrs[C.CKA_EC_POINT], {**GENERIC, C.CKA_VALUE_LEN: 100}, kdf, shared)
    assert long == X963KDF(alg(), 100, shared or None).derive(shared_secret(ka, pb))


def test_ecdh_bad_params(two):
    (pa, ka), (pb, _) = two
    point = pb.attrs[C.CKA_EC_POINT]
    other_curve = ec_pair(P384)[0].attrs[C.CKA_EC_POINT]
    off_curve = b"\x04" + b"\x01" * 64
    for param in (None, b"raw", Ecdh1DeriveParams(0x99, b"", point), Ecdh1DeriveParams(C.CKD_NULL, b"x", point),
                  Ecdh1DeriveParams(C.CKD_NULL, b"", other_curve), Ecdh1DeriveParams(C.CKD_NULL, b"", off_curve),
                  Ecdh1DeriveParams(C.CKD_NULL, b"", point[:-1])):
        assert rv(impl(C.CKM_ECDH1_DERIVE).derive, ka, param, GENERIC, None) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(derive, pa, point, GENERIC) == C.CKR_KEY_TYPE_INCONSISTENT


# --- the CKK_EC key type ----------------------------------------------------------------------
def test_ec_complete(pairs):
    pub, priv = pairs[P384]
    handler = registry.key_type(C.CKK_EC)
    made = handler.complete(C.CKO_PRIVATE_KEY, {C.CKA_EC_PARAMS: P384, C.CKA_VALUE: priv.attrs[C.CKA_VALUE]})
    assert made[C.CKA_EC_POINT] == pub.attrs[C.CKA_EC_POINT]
    assert made[C.CKA_PUBLIC_KEY_INFO] == pub.attrs[C.CKA_PUBLIC_KEY_INFO]
    raw = {C.CKA_EC_PARAMS: P384, C.CKA_EC_POINT: unwrap(pub.attrs[C.CKA_EC_POINT])}
    assert handler.complete(C.CKO_PUBLIC_KEY, raw)[C.CKA_EC_POINT] == pub.attrs[C.CKA_EC_POINT]
    assert rv(handler.complete, C.CKO_PUBLIC_KEY, {C.CKA_EC_PARAMS: P384, C.CKA_EC_POINT: b"\x04\x01" * 49}) == \
        C.CKR_ATTRIBUTE_VALUE_INVALID
    assert rv(handler.complete, C.CKO_PUBLIC_KEY, {C.CKA_EC_PARAMS: P384}) == C.CKR_TEMPLATE_INCOMPLETE
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, {C.CKA_EC_PARAMS: P384, C.CKA_VALUE: b"\x00"}) == \
        C.CKR_ATTRIBUTE_VALUE_INVALID
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, {C.CKA_VALUE: b"\x01"}) == C.CKR_TEMPLATE_INCOMPLETE


def test_ec_pkcs8_round_trip(pairs):
    pub, priv = pairs[P521]
    handler = registry.key_type(C.CKK_EC)
    der = handler.to_pkcs8(priv.attrs)
    loaded = serialization.load_der_private_key(der, None)
    assert loaded.private_numbers().private_value == int.from_bytes(priv.attrs[C.CKA_VALUE], "big")
    back = handler.from_pkcs8(der)
    assert back == {C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_EC_PARAMS: P521, C.CKA_VALUE: priv.attrs[C.CKA_VALUE]}
    k1 = ec.generate_private_key(ec.SECP256K1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert rv(handler.from_pkcs8, k1) == C.CKR_CURVE_NOT_SUPPORTED
    rsa_der = rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert rv(handler.from_pkcs8, rsa_der) == C.CKR_WRAPPED_KEY_INVALID


# --- EdDSA ----------------------------------------------------------------------------------
EDWARDS = {ED25519: (ed25519.Ed25519PublicKey, 32, 64), ED448: (ed448.Ed448PublicKey, 57, 114)}


@pytest.mark.parametrize("params,oid", [
    (ED25519, ED25519), (printable("edwards25519"), ED25519), (oid_der("1.3.6.1.4.1.11591.15.1"), ED25519),
    (ED448, ED448), (printable("edwards448"), ED448),
])
def test_eddsa_generate_sign_verify(params, oid):
    pub, priv = gen(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, params)
    cls, size, sig_len = EDWARDS[oid]
    point = pub.attrs[C.CKA_EC_POINT]
    assert point[:2] == bytes([0x04, size]) and len(point) == size + 2
    assert pub.attrs[C.CKA_KEY_TYPE] == priv.attrs[C.CKA_KEY_TYPE] == C.CKK_EC_EDWARDS
    assert len(priv.attrs[C.CKA_VALUE]) == size and priv.attrs[C.CKA_EC_POINT] == point
    assert serialization.load_der_public_key(pub.attrs[C.CKA_PUBLIC_KEY_INFO]).public_bytes_raw() == point[2:]
    sig = sign(C.CKM_EDDSA, priv, b"message")
    assert len(sig) == sig_len
    cls.from_public_bytes(point[2:]).verify(sig, b"message")
    verify(C.CKM_EDDSA, pub, b"message", sig)
    assert rv(verify, C.CKM_EDDSA, pub, b"massage", sig) == C.CKR_SIGNATURE_INVALID
    assert rv(verify, C.CKM_EDDSA, pub, b"message", sig[:-1]) == C.CKR_SIGNATURE_LEN_RANGE


RFC8032_1 = dict(
    secret="9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    public="d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    signature="e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


def test_ed25519_rfc8032_test_1():
    handler = registry.key_type(C.CKK_EC_EDWARDS)
    attrs = {C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_EC_PARAMS: printable("edwards25519"),
             C.CKA_VALUE: bytes.fromhex(RFC8032_1["secret"])}
    made = handler.complete(C.CKO_PRIVATE_KEY, attrs)
    assert made[C.CKA_EC_POINT] == b"\x04\x20" + bytes.fromhex(RFC8032_1["public"])
    priv = obj({**attrs, **made}, C.CKO_PRIVATE_KEY)
    assert sign(C.CKM_EDDSA, priv, b"") == bytes.fromhex(RFC8032_1["signature"])
    pub_attrs = {C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_EC_PARAMS: ED25519,
                 C.CKA_EC_POINT: bytes.fromhex(RFC8032_1["public"])}      # raw form accepted
    pub = obj({**pub_attrs, **handler.complete(C.CKO_PUBLIC_KEY, pub_attrs)}, C.CKO_PUBLIC_KEY)
    assert pub.attrs[C.CKA_EC_POINT] == made[C.CKA_EC_POINT]
    verify(C.CKM_EDDSA, pub, b"", bytes.fromhex(RFC8032_1["signature"]))


def test_eddsa_params():
    pub25, priv25 = gen(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, ED25519)
    pub448, priv448 = gen(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, ED448)
    pure = EddsaParams(False, b"")
    verify(C.CKM_EDDSA, pub448, b"m", sign(C.CKM_EDDSA, priv448, b"m", pure), pure)
    for key, param in ((priv25, pure), (priv25, EddsaParams(True, b"")), (priv448, EddsaParams(False, b"ctx")),
                       (priv448, EddsaParams(True, b"")), (priv25, b"raw")):
        assert rv(impl(C.CKM_EDDSA).sign_init, key, param) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(impl(C.CKM_EDDSA).verify_init, pub25, EddsaParams(True, b"")) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(impl(C.CKM_EDDSA).sign_init, pub25, None) == C.CKR_KEY_TYPE_INCONSISTENT
    ec_pub, _ = ec_pair()
    assert rv(impl(C.CKM_EDDSA).verify_init, ec_pub, None) == C.CKR_KEY_TYPE_INCONSISTENT


@pytest.mark.parametrize("params,code", [
    (P256, C.CKR_CURVE_NOT_SUPPORTED), (printable("curve25519"), C.CKR_CURVE_NOT_SUPPORTED),
    (None, C.CKR_TEMPLATE_INCOMPLETE),
])
def test_eddsa_generation_refused(params, code):
    template = {} if params is None else {C.CKA_EC_PARAMS: params}
    assert rv(impl(C.CKM_EC_EDWARDS_KEY_PAIR_GEN).generate_key_pair, None, template, {}) == code


@pytest.mark.parametrize("params", [ED25519, ED448])
def test_eddsa_key_type(params):
    pub, priv = gen(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, params)
    handler = registry.key_type(C.CKK_EC_EDWARDS)
    der = handler.to_pkcs8(priv.attrs)
    assert serialization.load_der_private_key(der, None).private_bytes_raw() == priv.attrs[C.CKA_VALUE]
    assert handler.from_pkcs8(der) == {C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_EC_PARAMS: params,
                                       C.CKA_VALUE: priv.attrs[C.CKA_VALUE]}
    ec_der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert rv(handler.from_pkcs8, ec_der) == C.CKR_WRAPPED_KEY_INVALID
    short = {C.CKA_EC_PARAMS: params, C.CKA_VALUE: priv.attrs[C.CKA_VALUE][:-1]}
    assert rv(handler.complete, C.CKO_PRIVATE_KEY, short) == C.CKR_ATTRIBUTE_VALUE_INVALID
    bad_point = {C.CKA_EC_PARAMS: params, C.CKA_EC_POINT: b"\x04\x05abcde"}
    assert rv(handler.complete, C.CKO_PUBLIC_KEY, bad_point) == C.CKR_ATTRIBUTE_VALUE_INVALID
