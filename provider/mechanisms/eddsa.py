"""EdDSA: Edwards key pair generation, CKM_EDDSA, the CKK_EC_EDWARDS key type.

Curves: Ed25519 and Ed448 (curves.EDWARDS), named by the RFC 8410 OID, by the
PrintableString "edwards25519" / "edwards448" (PKCS#11 3.0), or for Ed25519 by
the GnuPG OID 1.3.6.1.4.1.11591.15.1 that OpenSC's tools have sent.
CKA_EC_POINT is the RFC 8032 public key (32 / 57 bytes) in a DER OCTET STRING;
CKA_VALUE of the private key is the RFC 8032 private key (the seed).

CKM_EDDSA is single-part. Without a parameter it is pure Ed25519 / Ed448.
A CK_EDDSA_PARAMS is accepted only where it still means the pure scheme: for
Ed448 with phFlag false and an empty context. Ed25519ctx, Ed25519ph, Ed448ph and
Ed448 with a context are CKR_MECHANISM_PARAM_INVALID: `cryptography` (OpenSSL
through it) offers only the pure schemes.

CK_MECHANISM_INFO as SoftHSM2 reports it: sizes 255..448 bits, no CKF_EC_ flags.
"""

from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from .. import constants as C
from ..errors import PKCS11Error
from .asym import PointKeyType, OneShot, checked, key_of, load_pkcs8, spki
from .base import cached, require_param
from .curves import EDWARDS, EDWARDS_PARAMS, Curve, curve_of, wrap_point
from .params import EddsaParams
from .registry import register, register_key_type

MIN_BITS, MAX_BITS = 255, 448
SIGNATURE_LEN = {"Ed25519": 64, "Ed448": 114}
PUBLIC_CLASS = {"Ed25519": ed25519.Ed25519PublicKey, "Ed448": ed448.Ed448PublicKey}


def _curve(attrs: dict) -> Curve:
    return curve_of(attrs.get(C.CKA_EC_PARAMS), EDWARDS_PARAMS)


def _private_key(curve: Curve, value):
    value = bytes(value)
    if len(value) != curve.size:
        raise ValueError("private key length does not fit the curve")
    return curve.make.from_private_bytes(value)


def _public_key(curve: Curve, point):
    return PUBLIC_CLASS[curve.name].from_public_bytes(curve.raw_point(point))


def _point(public_key) -> bytes:
    return wrap_point(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _private(key):
    key_of(key, C.CKK_EC_EDWARDS, C.CKO_PRIVATE_KEY)
    return cached(key, "eddsa", lambda: (_curve(key.attrs), _private_key(_curve(key.attrs), key.attrs[C.CKA_VALUE])))


def _public(key):
    key_of(key, C.CKK_EC_EDWARDS, C.CKO_PUBLIC_KEY)
    return cached(key, "eddsa", lambda: (_curve(key.attrs), _public_key(_curve(key.attrs), key.attrs[C.CKA_EC_POINT])))


def _key_attrs(params: bytes, priv) -> tuple[dict, dict]:
    pub = priv.public_key()
    shared = {C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_EC_PARAMS: params, C.CKA_EC_POINT: _point(pub),
              C.CKA_PUBLIC_KEY_INFO: spki(pub)}
    return shared, {**shared, C.CKA_VALUE: priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())}


def _check_param(curve: Curve, param) -> None:
    if param is None:
        return
    require_param(isinstance(param, EddsaParams), "CK_EDDSA_PARAMS expected")
    require_param(curve.name == "Ed448" and not param.prehash and not param.context,
                  "only pure Ed25519 / Ed448 are supported")


def _verify(curve: Curve, pub, data: bytes, signature: bytes) -> None:
    if len(signature) != SIGNATURE_LEN[curve.name]:
        raise PKCS11Error(C.CKR_SIGNATURE_LEN_RANGE)
    checked(pub.verify, signature, data)


class Eddsa:
    def sign_init(self, key, param):
        curve, priv = _private(key)
        _check_param(curve, param)
        return OneShot(priv.sign, lambda n: SIGNATURE_LEN[curve.name])

    def verify_init(self, key, param):
        curve, pub = _public(key)
        _check_param(curve, param)
        return OneShot(lambda data, sig: _verify(curve, pub, data, sig), lambda n: SIGNATURE_LEN[curve.name])


class EdwardsKeyPairGen:
    def generate_key_pair(self, param, pub_template: dict, priv_template: dict):
        require_param(param is None, "takes no parameter")
        params = pub_template.get(C.CKA_EC_PARAMS)
        curve = curve_of(params, EDWARDS_PARAMS)
        return _key_attrs(bytes(params), curve.make.generate())


class EdwardsKeyType(PointKeyType):
    curve = staticmethod(_curve)
    public_key = staticmethod(_public_key)
    private_key = staticmethod(_private_key)
    point = staticmethod(_point)
    private_attrs = staticmethod(lambda curve, params, priv: _key_attrs(params, priv)[1])

    def from_pkcs8(self, der: bytes) -> dict:
        key = load_pkcs8(der, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
        curve = next(c for c in EDWARDS if isinstance(key, c.make))
        return {C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_EC_PARAMS: curve.params,
                C.CKA_VALUE: key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())}


register(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, EdwardsKeyPairGen(), MIN_BITS, MAX_BITS)
register(C.CKM_EDDSA, Eddsa(), MIN_BITS, MAX_BITS)
register_key_type(C.CKK_EC_EDWARDS, EdwardsKeyType())
