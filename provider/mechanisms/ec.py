"""EC over the NIST prime curves: key pair generation, ECDSA, ECDH, the CKK_EC key type.

Curves: P-256, P-384, P-521 (curves.WEIERSTRASS), named by OID or PrintableString.
Keys: CKA_VALUE is the private scalar, big-endian, padded to the order's length;
CKA_EC_POINT is the uncompressed point wrapped in a DER OCTET STRING, on the
public key and (token-set) on the private key.

ECDSA signatures are r || s, each padded to the order's byte length.

CKM_ECDSA signs the caller's bytes as the hash value. FIPS 186-4 6.4 uses the
leftmost min(N, 8 * len) bits of it (N = bit length of the group order). We
compute that integer e ourselves and hand OpenSSL a "digest" of ceil(N/8) bytes
holding e << (8 * ceil(N/8) - N): OpenSSL keeps the leftmost N bits of a digest
longer than the order, so it signs exactly e, whatever the input length. (The
digest is labelled SHA-256/384 where the length is one, SHAKE256 for P-521's
66 bytes; the label only satisfies `cryptography`'s length check.)

CKM_ECDH1_DERIVE (and CKM_ECDH1_COFACTOR_DERIVE: every curve here has cofactor 1,
so it is the same computation): the peer's point raw or DER-wrapped, as SoftHSM2
accepts; kdf CKD_NULL (no shared data) or the ANSI X9.63 KDF with SHA-1/2. The
new key's length is CKA_VALUE_LEN, else the key type's fixed length (DES/DES2/DES3),
else (generic secrets, HMAC keys) the length of the shared secret; AES needs
CKA_VALUE_LEN. With CKD_NULL a shorter key keeps the trailing bytes of the shared
secret, as SoftHSM2 does.

CK_MECHANISM_INFO: CKF_EC_F_P | CKF_EC_OID (2.40 CKF_EC_NAMEDCURVE) |
CKF_EC_UNCOMPRESS | CKF_EC_CURVENAME on every EC mechanism; sizes 256..521 bits.
"""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed, decode_dss_signature, encode_dss_signature)
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .. import constants as C
from ..errors import PKCS11Error
from .asym import PointKeyType, Hashed, OneShot, checked, key_of, load_pkcs8, spki, to_bytes, to_int
from .base import cached, derived_len, require_param
from .curves import WEIERSTRASS, WEIERSTRASS_PARAMS, Curve, curve_of, wrap_point
from .digest import hash_for
from .params import Ecdh1DeriveParams
from .registry import register, register_key_type

EC_FLAGS = C.CKF_EC_F_P | C.CKF_EC_OID | C.CKF_EC_UNCOMPRESS | C.CKF_EC_CURVENAME
MIN_BITS, MAX_BITS = 256, 521

# a digest length -> the hash `cryptography` is told produced it (see the module note)
PREHASH = {32: hashes.SHA256, 48: hashes.SHA384}

KDFS = {
    C.CKD_NULL: None,
    C.CKD_SHA1_KDF: C.CKM_SHA_1,
    C.CKD_SHA224_KDF: C.CKM_SHA224,
    C.CKD_SHA256_KDF: C.CKM_SHA256,
    C.CKD_SHA384_KDF: C.CKM_SHA384,
    C.CKD_SHA512_KDF: C.CKM_SHA512,
}


# --- keys -----------------------------------------------------------------------------
def _curve(attrs: dict) -> Curve:
    return curve_of(attrs.get(C.CKA_EC_PARAMS), WEIERSTRASS_PARAMS)


def _private_key(curve: Curve, value) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(to_int(value), curve.make())


def _public_key(curve: Curve, point) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(curve.make(), curve.raw_point(point))


def _point(public_key) -> bytes:
    return wrap_point(public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


def _private(key):
    key_of(key, C.CKK_EC, C.CKO_PRIVATE_KEY)
    return cached(key, "ec", lambda: (_curve(key.attrs), _private_key(_curve(key.attrs), key.attrs[C.CKA_VALUE])))


def _public(key):
    key_of(key, C.CKK_EC, C.CKO_PUBLIC_KEY)
    return cached(key, "ec", lambda: (_curve(key.attrs), _public_key(_curve(key.attrs), key.attrs[C.CKA_EC_POINT])))


def _key_attrs(curve: Curve, params: bytes, priv: ec.EllipticCurvePrivateKey) -> tuple[dict, dict]:
    pub = priv.public_key()
    shared = {C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_EC_PARAMS: params, C.CKA_EC_POINT: _point(pub),
              C.CKA_PUBLIC_KEY_INFO: spki(pub)}
    return shared, {**shared, C.CKA_VALUE: to_bytes(priv.private_numbers().private_value, curve.size)}


# --- ECDSA ----------------------------------------------------------------------------
def _prehashed(curve: Curve, data: bytes) -> tuple[bytes, Prehashed]:
    """The digest OpenSSL must be given so that it signs FIPS 186's e for `data`."""
    n_bits, size = curve.bits, curve.size
    e = to_int(data)
    excess = 8 * len(data) - n_bits
    if excess > 0:
        e >>= excess
    digest = (e << (8 * size - n_bits)).to_bytes(size, "big")
    alg = PREHASH[size]() if size in PREHASH else hashes.SHAKE256(size)
    return digest, Prehashed(alg)


def _sign(curve: Curve, priv, digest: bytes, algorithm) -> bytes:
    r, s = decode_dss_signature(priv.sign(digest, ec.ECDSA(algorithm)))
    return to_bytes(r, curve.size) + to_bytes(s, curve.size)


def _verify(curve: Curve, pub, digest: bytes, algorithm, signature: bytes) -> None:
    if len(signature) != 2 * curve.size:
        raise PKCS11Error(C.CKR_SIGNATURE_LEN_RANGE)
    der = encode_dss_signature(to_int(signature[:curve.size]), to_int(signature[curve.size:]))
    checked(pub.verify, der, digest, ec.ECDSA(algorithm))


class Ecdsa:
    """CKM_ECDSA (mech_hash None: single-part over a hash) or CKM_ECDSA_SHAx."""

    def __init__(self, mech_hash: int | None = None):
        self.mech_hash = mech_hash

    def sign_init(self, key, param):
        require_param(param is None, "takes no parameter")
        curve, priv = _private(key)
        if self.mech_hash is None:
            return OneShot(lambda data: _sign(curve, priv, *_prehashed(curve, data)), lambda n: 2 * curve.size)
        alg = hash_for(self.mech_hash)
        return Hashed(alg, lambda digest: _sign(curve, priv, digest, Prehashed(alg)), 2 * curve.size)

    def verify_init(self, key, param):
        require_param(param is None, "takes no parameter")
        curve, pub = _public(key)
        if self.mech_hash is None:
            return OneShot(lambda data, sig: _verify(curve, pub, *_prehashed(curve, data), sig),
                           lambda n: 2 * curve.size)
        alg = hash_for(self.mech_hash)
        return Hashed(alg, lambda digest, sig: _verify(curve, pub, digest, Prehashed(alg), sig), 2 * curve.size)


# --- ECDH -----------------------------------------------------------------------------
class Ecdh:
    def derive(self, base_key, param, template: dict, resolve) -> dict:
        require_param(isinstance(param, Ecdh1DeriveParams), "CK_ECDH1_DERIVE_PARAMS required")
        require_param(param.kdf in KDFS, "unsupported KDF")
        shared_data = bytes(param.shared_data or b"")
        require_param(param.kdf != C.CKD_NULL or not shared_data, "CKD_NULL takes no shared data")
        curve, priv = _private(base_key)
        try:
            peer = _public_key(curve, param.public_data)
        except ValueError:
            raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "public data is not a point on the key's curve") from None
        secret = priv.exchange(ec.ECDH(), peer)
        length = derived_len(template, len(secret))
        if KDFS[param.kdf] is None:
            if length > len(secret):
                raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE_LEN longer than the shared secret")
            return {C.CKA_VALUE: secret[len(secret) - length:]}
        kdf = X963KDF(hash_for(KDFS[param.kdf]), length, shared_data or None)
        return {C.CKA_VALUE: kdf.derive(secret)}


# --- generation and the key type -----------------------------------------------------
class EcKeyPairGen:
    def generate_key_pair(self, param, pub_template: dict, priv_template: dict):
        require_param(param is None, "takes no parameter")
        params = pub_template.get(C.CKA_EC_PARAMS)
        curve = curve_of(params, WEIERSTRASS_PARAMS)
        return _key_attrs(curve, bytes(params), ec.generate_private_key(curve.make()))


class EcKeyType(PointKeyType):
    curve = staticmethod(_curve)
    public_key = staticmethod(_public_key)
    private_key = staticmethod(_private_key)
    point = staticmethod(_point)
    private_attrs = staticmethod(lambda curve, params, priv: _key_attrs(curve, params, priv)[1])

    def from_pkcs8(self, der: bytes) -> dict:
        key = load_pkcs8(der, ec.EllipticCurvePrivateKey)
        names = {c.make.name: c for c in WEIERSTRASS}
        curve = names.get(key.curve.name)
        if curve is None:
            raise PKCS11Error(C.CKR_CURVE_NOT_SUPPORTED, "curve not supported")
        return {C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_EC_PARAMS: curve.params,
                C.CKA_VALUE: to_bytes(key.private_numbers().private_value, curve.size)}


register(C.CKM_EC_KEY_PAIR_GEN, EcKeyPairGen(), MIN_BITS, MAX_BITS, EC_FLAGS)
register(C.CKM_ECDSA, Ecdsa(), MIN_BITS, MAX_BITS, EC_FLAGS)
for _mech, _hash in {C.CKM_ECDSA_SHA1: C.CKM_SHA_1, C.CKM_ECDSA_SHA224: C.CKM_SHA224,
                     C.CKM_ECDSA_SHA256: C.CKM_SHA256, C.CKM_ECDSA_SHA384: C.CKM_SHA384,
                     C.CKM_ECDSA_SHA512: C.CKM_SHA512}.items():
    register(_mech, Ecdsa(_hash), MIN_BITS, MAX_BITS, EC_FLAGS)
register(C.CKM_ECDH1_DERIVE, Ecdh(), MIN_BITS, MAX_BITS, EC_FLAGS)
register(C.CKM_ECDH1_COFACTOR_DERIVE, Ecdh(), MIN_BITS, MAX_BITS, EC_FLAGS)
register_key_type(C.CKK_EC, EcKeyType())
