"""Mechanism parameters as the engine sees them, parsed from C structs by the shim.

A mechanism with no parameter gets None; one whose parameter is a plain byte
string (an IV for CBC, the optional IV of AES key wrap, the data of a
CK_KEY_DERIVATION_STRING_DATA) gets `bytes`; a CK_ULONG
parameter (e.g. a MAC length) gets `int`; the rest get one of these dataclasses.
The shim rejects a parameter whose length fits no known layout with
CKR_MECHANISM_PARAM_INVALID; families reject values they cannot use the same way.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mechanism:
    type: int
    param: object = None


@dataclass(frozen=True)
class GcmParams:           # CK_GCM_PARAMS (3.0 layout; the 2.40 one is read by size)
    iv: bytes
    iv_bits: int
    aad: bytes
    tag_bits: int


@dataclass(frozen=True)
class GcmMessageParams:    # CK_GCM_MESSAGE_PARAMS, per message of C_EncryptMessage & co.
    iv: bytes
    iv_fixed_bits: int
    iv_generator: int
    tag_bits: int
    tag: bytes = b""       # decryption: the tag to check (pTag); encryption writes pTag


@dataclass(frozen=True)
class CtrParams:           # CK_AES_CTR_PARAMS
    counter_bits: int
    cb: bytes


@dataclass(frozen=True)
class OaepParams:          # CK_RSA_PKCS_OAEP_PARAMS
    hash_alg: int
    mgf: int
    source: int
    source_data: bytes


@dataclass(frozen=True)
class PssParams:           # CK_RSA_PKCS_PSS_PARAMS
    hash_alg: int
    mgf: int
    salt_len: int


@dataclass(frozen=True)
class EddsaParams:         # CK_EDDSA_PARAMS
    prehash: bool
    context: bytes


@dataclass(frozen=True)
class Ecdh1DeriveParams:   # CK_ECDH1_DERIVE_PARAMS
    kdf: int
    shared_data: bytes
    public_data: bytes


@dataclass(frozen=True)
class HkdfParams:          # CK_HKDF_PARAMS
    extract: bool
    expand: bool
    prf_hash: int          # a digest mechanism, e.g. CKM_SHA256
    salt_type: int         # CKF_HKDF_SALT_NULL / _DATA / _KEY
    salt: bytes
    salt_key: int          # object handle when salt_type == CKF_HKDF_SALT_KEY
    info: bytes


@dataclass(frozen=True)
class Pbkdf2Params:        # CK_PKCS5_PBKD2_PARAMS / CK_PKCS5_PBKD2_PARAMS2
    salt_source: int
    salt: bytes
    iterations: int
    prf: int               # CKP_PKCS5_PBKD2_HMAC_*
    prf_data: bytes
    password: bytes


@dataclass(frozen=True)
class CbcEncryptDataParams:  # CK_AES_CBC_ENCRYPT_DATA_PARAMS / CK_DES_CBC_ENCRYPT_DATA_PARAMS
    iv: bytes
    data: bytes
