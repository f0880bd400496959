"""RSA: key pair generation, PKCS#1 v1.5, OAEP and PSS, and the CKK_RSA key type.

Choices where the spec leaves room:
  - key sizes 2048..4096 bits, for generation and for every operation
    (CK_MECHANISM_INFO says so; SoftHSM2 allows 512 and up, we keep a 2048 floor);
    a smaller or larger imported key can be stored but not used (CKR_KEY_SIZE_RANGE);
  - CKA_PUBLIC_EXPONENT at generation: 65537 by default, 3 also accepted (the only
    two values `cryptography` generates with), others CKR_ATTRIBUTE_VALUE_INVALID;
  - CKM_RSA_PKCS signs the caller's bytes (normally a DigestInfo) with type-1
    padding. A DigestInfo of SHA-1/2 goes through `cryptography` (OpenSSL); any other
    input (e.g. the TLS 1.0 MD5+SHA-1 concatenation) is padded here and raised to
    the private exponent with CRT and RSA blinding, the result checked against the
    public key before it is returned. No CKM_RSA_X_509.
  - CKM_RSA_PKCS_OAEP: hash and MGF1 from SHA-1/224/256/384/512; source must be
    CKZ_DATA_SPECIFIED (0 accepted with no label, as some clients send).
  - CKM_SHAx_RSA_PKCS_PSS: the parameter's hash must be the mechanism's hash.
"""

import hmac
import math
import secrets

from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .. import constants as C
from ..errors import PKCS11Error
from .asym import Hashed, OneShot, checked, key_of, load_pkcs8, need, pkcs8, spki, to_bytes, to_int
from .base import cached, require_param
from .digest import MGF1, hash_for
from .params import OaepParams, PssParams
from .registry import register, register_key_type

MIN_BITS, MAX_BITS = 2048, 4096
EXPONENTS = (3, 65537)
PKCS1_OVERHEAD = 11

# hash mechanisms a PSS/OAEP parameter may name (those MGF1 is defined for)
PARAM_HASHES = frozenset(MGF1.values())

# RFC 8017 section 9.2 note 1: DigestInfo prefixes -> hash mechanism
DIGEST_INFO = {
    bytes.fromhex("3021300906052b0e03021a05000414"): C.CKM_SHA_1,
    bytes.fromhex("302d300d06096086480165030402040500041c"): C.CKM_SHA224,
    bytes.fromhex("3031300d060960864801650304020105000420"): C.CKM_SHA256,
    bytes.fromhex("3041300d060960864801650304020205000430"): C.CKM_SHA384,
    bytes.fromhex("3051300d060960864801650304020305000440"): C.CKM_SHA512,
}

PRIVATE_PARTS = (C.CKA_PRIVATE_EXPONENT, C.CKA_PRIME_1, C.CKA_PRIME_2, C.CKA_EXPONENT_1,
                 C.CKA_EXPONENT_2, C.CKA_COEFFICIENT)


# --- keys -----------------------------------------------------------------------------
def _sized(key):
    if not MIN_BITS <= key.key_size <= MAX_BITS:
        raise PKCS11Error(C.CKR_KEY_SIZE_RANGE, f"RSA key of {key.key_size} bits")
    return key


def _public(key):
    key_of(key, C.CKK_RSA, C.CKO_PUBLIC_KEY)
    return _sized(cached(key, "rsa", lambda: rsa.RSAPublicNumbers(
        to_int(key.attrs[C.CKA_PUBLIC_EXPONENT]), to_int(key.attrs[C.CKA_MODULUS])).public_key()))


def _private(key):
    key_of(key, C.CKK_RSA, C.CKO_PRIVATE_KEY)
    return _sized(cached(key, "rsa", lambda: _numbers(key.attrs).private_key()))


def _numbers(attrs: dict) -> rsa.RSAPrivateNumbers:
    a = {cka: to_int(attrs[cka]) for cka in (C.CKA_MODULUS, C.CKA_PUBLIC_EXPONENT, *PRIVATE_PARTS)}
    return rsa.RSAPrivateNumbers(
        a[C.CKA_PRIME_1], a[C.CKA_PRIME_2], a[C.CKA_PRIVATE_EXPONENT], a[C.CKA_EXPONENT_1],
        a[C.CKA_EXPONENT_2], a[C.CKA_COEFFICIENT],
        rsa.RSAPublicNumbers(a[C.CKA_PUBLIC_EXPONENT], a[C.CKA_MODULUS]))


def _public_attrs(pub: rsa.RSAPublicNumbers) -> dict:
    return {C.CKA_MODULUS: to_bytes(pub.n), C.CKA_PUBLIC_EXPONENT: to_bytes(pub.e)}


def _private_attrs(nums: rsa.RSAPrivateNumbers) -> dict:
    return {**_public_attrs(nums.public_numbers),
            C.CKA_PRIVATE_EXPONENT: to_bytes(nums.d), C.CKA_PRIME_1: to_bytes(nums.p),
            C.CKA_PRIME_2: to_bytes(nums.q), C.CKA_EXPONENT_1: to_bytes(nums.dmp1),
            C.CKA_EXPONENT_2: to_bytes(nums.dmq1), C.CKA_COEFFICIENT: to_bytes(nums.iqmp)}


def _size(key) -> int:
    return (key.key_size + 7) // 8


# --- PKCS#1 v1.5 ------------------------------------------------------------------------
def _raw_sign(priv, data: bytes) -> bytes:
    """Type-1 padded data raised to d, with CRT and blinding, checked before release."""
    k = _size(priv)
    m = to_int(b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data)
    nums = priv.private_numbers()
    n, e = nums.public_numbers.n, nums.public_numbers.e
    while True:
        r = secrets.randbelow(n - 3) + 2
        if math.gcd(r, n) == 1:
            break
    c = m * pow(r, e, n) % n
    s1, s2 = pow(c, nums.dmp1, nums.p), pow(c, nums.dmq1, nums.q)
    s = (s2 + nums.q * (nums.iqmp * (s1 - s2) % nums.p)) * pow(r, -1, n) % n
    if pow(s, e, n) != m:
        raise PKCS11Error(C.CKR_FUNCTION_FAILED, "RSA signature self-check failed")
    return to_bytes(s, k)


def _pkcs1_sign(priv, data: bytes) -> bytes:
    if len(data) > _size(priv) - PKCS1_OVERHEAD:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE)
    for prefix, mech in DIGEST_INFO.items():
        alg = hash_for(mech)
        if data.startswith(prefix) and len(data) == len(prefix) + alg.digest_size:
            return priv.sign(data[len(prefix):], padding.PKCS1v15(), Prehashed(alg))
    return _raw_sign(priv, data)


def _signature_len(pub, signature: bytes) -> None:
    if len(signature) != _size(pub):
        raise PKCS11Error(C.CKR_SIGNATURE_LEN_RANGE)


def _pkcs1_verify(pub, data: bytes, signature: bytes) -> None:
    if len(data) > _size(pub) - PKCS1_OVERHEAD:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE)
    _signature_len(pub, signature)
    recovered = b""
    try:
        recovered = pub.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except Exception:   # InvalidSignature, or a value out of range
        pass
    if not hmac.compare_digest(recovered, data):
        raise PKCS11Error(C.CKR_SIGNATURE_INVALID)


def _at_most(key, overhead: int):
    """The output length function of an operation taking at most k - overhead bytes."""
    def size(n: int) -> int:
        if n > _size(key) - overhead:
            raise PKCS11Error(C.CKR_DATA_LEN_RANGE)
        return _size(key)
    return size


def _one_block(key):
    """... and of a decryption taking exactly one modulus-sized block (output: only the data tells)."""
    def size(n: int) -> None:
        if n != _size(key):
            raise PKCS11Error(C.CKR_ENCRYPTED_DATA_LEN_RANGE)
    return size


def _encrypt(pub, pad, overhead: int, data: bytes) -> bytes:
    _at_most(pub, overhead)(len(data))
    return pub.encrypt(data, pad)


def _decrypt(priv, pad, data: bytes) -> bytes:
    _one_block(priv)(len(data))
    try:
        return priv.decrypt(data, pad)
    except ValueError:
        raise PKCS11Error(C.CKR_ENCRYPTED_DATA_INVALID) from None


class _Cipher:
    """Encrypt/decrypt and wrap/unwrap of one padding; `padding(param)` checks the parameter."""

    def padding(self, param):
        raise NotImplementedError

    def encrypt_init(self, key, param):
        pad, overhead = self.padding(param)
        pub = _public(key)
        return OneShot(lambda data: _encrypt(pub, pad, overhead, data), _at_most(pub, overhead))

    def decrypt_init(self, key, param):
        pad, _ = self.padding(param)
        priv = _private(key)
        return OneShot(lambda data: _decrypt(priv, pad, data), _one_block(priv))

    def wrap(self, wrapping_key, param, key_bytes: bytes) -> bytes:
        pad, overhead = self.padding(param)
        pub = _public(wrapping_key)
        if len(key_bytes) > _size(pub) - overhead:
            raise PKCS11Error(C.CKR_KEY_NOT_WRAPPABLE, "key too long for this RSA wrapping key")
        return pub.encrypt(bytes(key_bytes), pad)

    def unwrap(self, unwrapping_key, param, wrapped: bytes) -> bytes:
        pad, _ = self.padding(param)
        return _decrypt(_private(unwrapping_key), pad, bytes(wrapped))


class RsaPkcs(_Cipher):
    def padding(self, param):
        require_param(param is None, "CKM_RSA_PKCS takes no parameter")
        return padding.PKCS1v15(), PKCS1_OVERHEAD

    def sign_init(self, key, param):
        self.padding(param)
        priv = _private(key)
        return OneShot(lambda data: _pkcs1_sign(priv, data), _at_most(priv, PKCS1_OVERHEAD))

    def verify_init(self, key, param):
        self.padding(param)
        pub = _public(key)
        return OneShot(lambda data, sig: _pkcs1_verify(pub, data, sig), _at_most(pub, PKCS1_OVERHEAD))


class RsaOaep(_Cipher):
    def padding(self, param):
        require_param(isinstance(param, OaepParams), "CK_RSA_PKCS_OAEP_PARAMS required")
        require_param(param.hash_alg in PARAM_HASHES, "unsupported OAEP hash")
        require_param(param.mgf in MGF1, "unsupported OAEP MGF")
        label = bytes(param.source_data or b"")
        require_param(param.source == C.CKZ_DATA_SPECIFIED or (param.source == 0 and not label),
                      "OAEP source must be CKZ_DATA_SPECIFIED")
        alg = hash_for(param.hash_alg)
        pad = padding.OAEP(mgf=padding.MGF1(hash_for(MGF1[param.mgf])), algorithm=alg, label=label or None)
        return pad, 2 * alg.digest_size + 2


# --- PSS --------------------------------------------------------------------------------
def _pss(param, key, mech_hash: int | None):
    """(padding, hash) of a CK_RSA_PKCS_PSS_PARAMS for this key."""
    require_param(isinstance(param, PssParams), "CK_RSA_PKCS_PSS_PARAMS required")
    require_param(param.hash_alg in PARAM_HASHES, "unsupported PSS hash")
    require_param(mech_hash is None or param.hash_alg == mech_hash, "PSS hash differs from the mechanism's")
    require_param(param.mgf in MGF1, "unsupported PSS MGF")
    alg = hash_for(param.hash_alg)
    em_len = (key.key_size - 1 + 7) // 8
    require_param(0 <= param.salt_len <= em_len - alg.digest_size - 2, "PSS salt length out of range")
    return padding.PSS(mgf=padding.MGF1(hash_for(MGF1[param.mgf])), salt_length=param.salt_len), alg


def _pss_sign(priv, pad, alg, digest: bytes) -> bytes:
    if len(digest) != alg.digest_size:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE, "data must be one hash value")
    return priv.sign(digest, pad, Prehashed(alg))


def _pss_verify(pub, pad, alg, digest: bytes, signature: bytes) -> None:
    if len(digest) != alg.digest_size:
        raise PKCS11Error(C.CKR_DATA_LEN_RANGE, "data must be one hash value")
    _signature_len(pub, signature)
    checked(pub.verify, signature, digest, pad, Prehashed(alg))


class RsaPss:
    """CKM_RSA_PKCS_PSS over a hash computed by the caller (mech_hash None), or
    CKM_SHAx_RSA_PKCS_PSS hashing the data itself."""

    def __init__(self, mech_hash: int | None = None):
        self.mech_hash = mech_hash

    def _ctx(self, fn, alg, key):
        if self.mech_hash is not None:
            return Hashed(alg, fn, _size(key))

        def size(n: int) -> int:
            if n != alg.digest_size:
                raise PKCS11Error(C.CKR_DATA_LEN_RANGE, "data must be one hash value")
            return _size(key)
        return OneShot(fn, size)

    def sign_init(self, key, param):
        priv = _private(key)
        pad, alg = _pss(param, priv, self.mech_hash)
        return self._ctx(lambda digest: _pss_sign(priv, pad, alg, digest), alg, priv)

    def verify_init(self, key, param):
        pub = _public(key)
        pad, alg = _pss(param, pub, self.mech_hash)
        return self._ctx(lambda digest, sig: _pss_verify(pub, pad, alg, digest, sig), alg, pub)


class HashedPkcs1:
    """CKM_SHAx_RSA_PKCS: hash the data, then a PKCS#1 v1.5 signature of its DigestInfo."""

    def __init__(self, mech_hash: int):
        self.mech_hash = mech_hash

    def sign_init(self, key, param):
        require_param(param is None, "takes no parameter")
        priv, alg = _private(key), hash_for(self.mech_hash)
        return Hashed(alg, lambda digest: priv.sign(digest, padding.PKCS1v15(), Prehashed(alg)), _size(priv))

    def verify_init(self, key, param):
        require_param(param is None, "takes no parameter")
        pub, alg = _public(key), hash_for(self.mech_hash)

        def verify(digest, signature):
            _signature_len(pub, signature)
            checked(pub.verify, signature, digest, padding.PKCS1v15(), Prehashed(alg))
        return Hashed(alg, verify, _size(pub))


# --- generation and the key type ----------------------------------------------------------
class RsaKeyPairGen:
    def generate_key_pair(self, param, pub_template: dict, priv_template: dict):
        require_param(param is None, "takes no parameter")
        bits = pub_template.get(C.CKA_MODULUS_BITS)
        if bits is None:
            raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS_BITS missing")
        if not MIN_BITS <= bits <= MAX_BITS:
            raise PKCS11Error(C.CKR_KEY_SIZE_RANGE, f"{bits} bits")
        exponent = to_int(pub_template.get(C.CKA_PUBLIC_EXPONENT, b"\x01\x00\x01"))
        if exponent not in EXPONENTS:
            raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "public exponent must be 65537 or 3")
        key = rsa.generate_private_key(exponent, bits)
        info = spki(key.public_key())
        pub = {C.CKA_KEY_TYPE: C.CKK_RSA, **_public_attrs(key.public_key().public_numbers()),
               C.CKA_MODULUS_BITS: bits, C.CKA_PUBLIC_KEY_INFO: info}
        priv = {C.CKA_KEY_TYPE: C.CKK_RSA, **_private_attrs(key.private_numbers()), C.CKA_PUBLIC_KEY_INFO: info}
        return pub, priv


def _invalid(what: str) -> PKCS11Error:
    return PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, what)


class RsaKeyType:
    def complete(self, obj_class: int, attrs: dict) -> dict:
        if obj_class == C.CKO_PUBLIC_KEY:
            need(attrs, C.CKA_MODULUS, C.CKA_PUBLIC_EXPONENT)
            try:
                key = rsa.RSAPublicNumbers(to_int(attrs[C.CKA_PUBLIC_EXPONENT]),
                                           to_int(attrs[C.CKA_MODULUS])).public_key()
            except ValueError:
                raise _invalid("not an RSA public key") from None
            return {C.CKA_MODULUS_BITS: key.key_size, C.CKA_PUBLIC_KEY_INFO: spki(key)}
        need(attrs, C.CKA_MODULUS, C.CKA_PRIVATE_EXPONENT)
        nums = self._complete_private(attrs)
        try:
            key = nums.private_key()
        except ValueError:
            raise _invalid("inconsistent RSA private key") from None
        return {**_private_attrs(nums), C.CKA_PUBLIC_KEY_INFO: spki(key.public_key())}

    @staticmethod
    def _complete_private(attrs: dict) -> rsa.RSAPrivateNumbers:
        """The full CRT form of a private key, recovering what the template left out."""
        n, d = to_int(attrs[C.CKA_MODULUS]), to_int(attrs[C.CKA_PRIVATE_EXPONENT])
        e = to_int(attrs.get(C.CKA_PUBLIC_EXPONENT) or b"")
        p, q = to_int(attrs.get(C.CKA_PRIME_1) or b""), to_int(attrs.get(C.CKA_PRIME_2) or b"")
        try:
            if not e:
                if not (p and q):
                    raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_PUBLIC_EXPONENT or the primes needed")
                e = pow(d, -1, math.lcm(p - 1, q - 1))
            if not (p and q):
                p, q = rsa.rsa_recover_prime_factors(n, e, d)
            if all(attrs.get(cka) for cka in PRIVATE_PARTS):
                return _numbers({**attrs, C.CKA_PUBLIC_EXPONENT: to_bytes(e)})
            return rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                         rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, n))
        except (ValueError, ArithmeticError):
            raise _invalid("inconsistent RSA private key") from None

    def to_pkcs8(self, attrs: dict) -> bytes:
        return pkcs8(_numbers(attrs).private_key())

    def from_pkcs8(self, der: bytes) -> dict:
        key = load_pkcs8(der, rsa.RSAPrivateKey)
        return {C.CKA_KEY_TYPE: C.CKK_RSA, **_private_attrs(key.private_numbers())}


register(C.CKM_RSA_PKCS_KEY_PAIR_GEN, RsaKeyPairGen(), MIN_BITS, MAX_BITS)
register(C.CKM_RSA_PKCS, RsaPkcs(), MIN_BITS, MAX_BITS)
register(C.CKM_RSA_PKCS_OAEP, RsaOaep(), MIN_BITS, MAX_BITS)
register(C.CKM_RSA_PKCS_PSS, RsaPss(), MIN_BITS, MAX_BITS)
for _mech, _hash in {C.CKM_SHA1_RSA_PKCS: C.CKM_SHA_1, C.CKM_SHA224_RSA_PKCS: C.CKM_SHA224,
                     C.CKM_SHA256_RSA_PKCS: C.CKM_SHA256, C.CKM_SHA384_RSA_PKCS: C.CKM_SHA384,
                     C.CKM_SHA512_RSA_PKCS: C.CKM_SHA512}.items():
    register(_mech, HashedPkcs1(_hash), MIN_BITS, MAX_BITS)
for _mech, _hash in {C.CKM_SHA1_RSA_PKCS_PSS: C.CKM_SHA_1, C.CKM_SHA224_RSA_PKCS_PSS: C.CKM_SHA224,
                     C.CKM_SHA256_RSA_PKCS_PSS: C.CKM_SHA256, C.CKM_SHA384_RSA_PKCS_PSS: C.CKM_SHA384,
                     C.CKM_SHA512_RSA_PKCS_PSS: C.CKM_SHA512}.items():
    register(_mech, RsaPss(_hash), MIN_BITS, MAX_BITS)
register_key_type(C.CKK_RSA, RsaKeyType())
