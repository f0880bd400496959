"""What each governed-key algorithm is in PKCS#11 terms: the generating mechanism, the
key type, the attributes its templates add, and the usages it may have. A usage maps to
the usage attributes of the version's key object (a pair: the public half encrypts,
verifies and wraps; the private half decrypts, signs and unwraps)."""

from dataclasses import dataclass, field

from .. import constants as C

P256 = bytes.fromhex("06082a8648ce3d030107")        # DER OID 1.2.840.10045.3.1.7
P384 = bytes.fromhex("06052b81040022")              # 1.3.132.0.34
ED25519 = bytes.fromhex("06032b6570")               # 1.3.101.112
F4 = b"\x01\x00\x01"


@dataclass(frozen=True)
class Spec:
    mech: int
    key_type: int
    usages: frozenset                  # the usages a key of this algorithm may have
    secret: dict = field(default_factory=dict)     # a secret key's template additions
    public: dict = field(default_factory=dict)     # a pair's public template additions

    @property
    def pair(self) -> bool:
        return not self.secret


SYMMETRIC = frozenset({"encrypt", "decrypt", "wrap", "unwrap"})
RSA = frozenset({"encrypt", "decrypt", "sign", "verify", "wrap", "unwrap"})
SIGNING = frozenset({"sign", "verify"})

SPECS = {
    "aes-256-gcm": Spec(C.CKM_AES_KEY_GEN, C.CKK_AES, SYMMETRIC, secret={C.CKA_VALUE_LEN: 32}),
    "hmac-sha256": Spec(C.CKM_GENERIC_SECRET_KEY_GEN, C.CKK_GENERIC_SECRET, frozenset({"mac"}),
                        secret={C.CKA_VALUE_LEN: 32}),
    "rsa-2048": Spec(C.CKM_RSA_PKCS_KEY_PAIR_GEN, C.CKK_RSA, RSA,
                     public={C.CKA_MODULUS_BITS: 2048, C.CKA_PUBLIC_EXPONENT: F4}),
    "rsa-3072": Spec(C.CKM_RSA_PKCS_KEY_PAIR_GEN, C.CKK_RSA, RSA,
                     public={C.CKA_MODULUS_BITS: 3072, C.CKA_PUBLIC_EXPONENT: F4}),
    "rsa-4096": Spec(C.CKM_RSA_PKCS_KEY_PAIR_GEN, C.CKK_RSA, RSA,
                     public={C.CKA_MODULUS_BITS: 4096, C.CKA_PUBLIC_EXPONENT: F4}),
    "ec-p256": Spec(C.CKM_EC_KEY_PAIR_GEN, C.CKK_EC, SIGNING, public={C.CKA_EC_PARAMS: P256}),
    "ec-p384": Spec(C.CKM_EC_KEY_PAIR_GEN, C.CKK_EC, SIGNING, public={C.CKA_EC_PARAMS: P384}),
    "ed25519": Spec(C.CKM_EC_EDWARDS_KEY_PAIR_GEN, C.CKK_EC_EDWARDS, SIGNING, public={C.CKA_EC_PARAMS: ED25519}),
}

# usage -> (attributes it sets on a secret key, on a public key, on a private key)
USAGE_ATTRS = {
    "encrypt": ((C.CKA_ENCRYPT,), (C.CKA_ENCRYPT,), ()),
    "decrypt": ((C.CKA_DECRYPT,), (), (C.CKA_DECRYPT,)),
    "sign": ((C.CKA_SIGN,), (), (C.CKA_SIGN,)),
    "verify": ((C.CKA_VERIFY,), (C.CKA_VERIFY,), ()),
    "wrap": ((C.CKA_WRAP,), (C.CKA_WRAP,), ()),
    "unwrap": ((C.CKA_UNWRAP,), (), (C.CKA_UNWRAP,)),
    "mac": ((C.CKA_SIGN, C.CKA_VERIFY), (), ()),
}
SECRET_FLAGS = (C.CKA_ENCRYPT, C.CKA_DECRYPT, C.CKA_SIGN, C.CKA_VERIFY, C.CKA_WRAP, C.CKA_UNWRAP, C.CKA_DERIVE)
PUBLIC_FLAGS = (C.CKA_ENCRYPT, C.CKA_VERIFY, C.CKA_WRAP, C.CKA_VERIFY_RECOVER, C.CKA_DERIVE)
PRIVATE_FLAGS = (C.CKA_DECRYPT, C.CKA_SIGN, C.CKA_UNWRAP, C.CKA_SIGN_RECOVER, C.CKA_DERIVE)


def usage_flags(usage, half: int) -> dict:
    """The usage attributes (all of them, true or false) of one object of a version:
    half 0 secret, 1 public, 2 private."""
    on = {cka for u in usage for cka in USAGE_ATTRS[u][half]}
    return {cka: cka in on for cka in (SECRET_FLAGS, PUBLIC_FLAGS, PRIVATE_FLAGS)[half]}


def of_key(algorithm: str, cls: int, attrs: dict) -> bool:
    """Is a plain key object (class `cls`, its attributes) of `algorithm`? (adoption)"""
    spec = SPECS[algorithm]
    if attrs.get(C.CKA_KEY_TYPE) != spec.key_type or (cls == C.CKO_SECRET_KEY) != bool(spec.secret):
        return False
    if spec.secret:
        return attrs.get(C.CKA_VALUE_LEN) == spec.secret[C.CKA_VALUE_LEN]
    if spec.key_type == C.CKK_RSA:
        modulus = attrs.get(C.CKA_MODULUS)
        return modulus is not None and len(modulus) * 8 == spec.public[C.CKA_MODULUS_BITS]
    return attrs.get(C.CKA_EC_PARAMS) == spec.public[C.CKA_EC_PARAMS]
