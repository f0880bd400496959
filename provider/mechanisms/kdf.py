"""Key derivation: CKM_HKDF_DERIVE (RFC 5869), CKM_HKDF_KEY_GEN, CKM_PKCS5_PBKD2.

Choices:
  - HKDF base keys and salt keys: CKK_GENERIC_SECRET or CKK_HKDF. A salt key of
    another type, or a salt source that is none of NULL/DATA/KEY, is
    CKR_MECHANISM_PARAM_INVALID; CKF_HKDF_SALT_DATA needs a non-empty salt.
    When bExtract is false the salt is not used (the base key is the PRK).
  - The new key's length is CKA_VALUE_LEN when the template gives it. Without
    it, a generic-type key gets the hash length; an AES key needs it
    (CKR_TEMPLATE_INCOMPLETE). Extract-only output is the PRK, so a stated
    CKA_VALUE_LEN must equal the hash length (CKR_TEMPLATE_INCONSISTENT).
    An expand longer than 255 hash blocks is CKR_ATTRIBUTE_VALUE_INVALID.
  - Derived keys may be of a generic type (generic.GENERIC_TYPES) or CKK_AES;
    another key type is CKR_TEMPLATE_INCONSISTENT.
  - CKM_HKDF_DATA is not offered: it makes a CKO_DATA object, and C_DeriveKey
    in this engine makes secret keys only.
  - PBKDF2 (as C_GenerateKey, the way PKCS#11 defines it): salt source
    CKZ_SALT_SPECIFIED only, PRF HMAC-SHA1/224/256/384/512, iterations >= 1,
    pPrfData ignored. Key type from the template (default generic secret);
    length from CKA_VALUE_LEN, required.
"""

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .. import constants as C
from ..errors import PKCS11Error
from .base import check_key_type, require_param, secret
from .digest import hash_for
from .generic import GENERIC_TYPES, MAX_LEN, MIN_LEN, SecretKeyGen
from .params import HkdfParams, Pbkdf2Params
from .registry import key_type as key_type_handler
from .registry import register

HKDF_KEY_TYPES = (C.CKK_GENERIC_SECRET, C.CKK_HKDF)
DERIVABLE_TYPES = (*GENERIC_TYPES, C.CKK_AES)

PBKDF2_PRFS = {
    C.CKP_PKCS5_PBKD2_HMAC_SHA1: hashes.SHA1,
    C.CKP_PKCS5_PBKD2_HMAC_SHA224: hashes.SHA224,
    C.CKP_PKCS5_PBKD2_HMAC_SHA256: hashes.SHA256,
    C.CKP_PKCS5_PBKD2_HMAC_SHA384: hashes.SHA384,
    C.CKP_PKCS5_PBKD2_HMAC_SHA512: hashes.SHA512,
}


def _new_key_type(template: dict) -> int:
    kt = template.get(C.CKA_KEY_TYPE, C.CKK_GENERIC_SECRET)
    if kt not in DERIVABLE_TYPES:
        raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, "cannot make a " + C.name_of("CKK_", kt) + " this way")
    return kt


def _stated_len(template: dict, kt: int, default: int | None) -> int:
    n = template.get(C.CKA_VALUE_LEN)
    if n is None:
        if kt == C.CKK_AES or default is None:
            raise PKCS11Error(C.CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN missing")
        return default
    if n < 1:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE_LEN must be positive")
    return n


# --- HKDF --------------------------------------------------------------------------
def _salt(param: HkdfParams, algorithm, resolve) -> bytes:
    if param.salt_type == C.CKF_HKDF_SALT_NULL:
        return bytes(algorithm.digest_size)                # RFC 5869 §2.2
    if param.salt_type == C.CKF_HKDF_SALT_DATA:
        require_param(bool(param.salt), "CKF_HKDF_SALT_DATA needs a salt")
        return bytes(param.salt)
    require_param(param.salt_type == C.CKF_HKDF_SALT_KEY, "unknown salt type")
    salt_key = resolve(param.salt_key)
    require_param(salt_key.cls == C.CKO_SECRET_KEY and salt_key.key_type in HKDF_KEY_TYPES,
                  "the salt key must be a generic secret or HKDF key")
    return secret(salt_key)


class HkdfDerive:
    @staticmethod
    def derive(base, param, template: dict, resolve) -> dict:
        require_param(isinstance(param, HkdfParams), "CK_HKDF_PARAMS required")
        require_param(param.extract or param.expand, "bExtract or bExpand must be true")
        algorithm = hash_for(param.prf_hash)
        check_key_type(base, *HKDF_KEY_TYPES)
        kt = _new_key_type(template)
        n = _stated_len(template, kt, algorithm.digest_size)
        key = secret(base)
        if param.extract:
            mac = hmac.HMAC(_salt(param, algorithm, resolve), algorithm)
            mac.update(key)
            key = mac.finalize()
        if not param.expand:
            if n != len(key):
                raise PKCS11Error(C.CKR_TEMPLATE_INCONSISTENT, "extract-only output is one hash long")
            return {C.CKA_VALUE: key}
        if n > 255 * algorithm.digest_size:
            raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "longer than HKDF can expand")
        return {C.CKA_VALUE: HKDFExpand(algorithm, n, bytes(param.info or b"")).derive(key)}


# --- PBKDF2 ------------------------------------------------------------------------
class Pbkdf2:
    @staticmethod
    def generate_key(param, template: dict) -> dict:
        require_param(isinstance(param, Pbkdf2Params), "CK_PKCS5_PBKD2_PARAMS required")
        require_param(param.salt_source == C.CKZ_SALT_SPECIFIED, "only CKZ_SALT_SPECIFIED")
        require_param(param.prf in PBKDF2_PRFS, "unsupported PRF")
        require_param(param.iterations >= 1, "iterations must be at least 1")
        kt = _new_key_type(template)
        n = _stated_len(template, kt, None)
        value = PBKDF2HMAC(PBKDF2_PRFS[param.prf](), n, bytes(param.salt or b""),
                           param.iterations).derive(bytes(param.password or b""))
        attrs = {C.CKA_KEY_TYPE: kt, C.CKA_VALUE: value}
        attrs.update(key_type_handler(kt).complete(C.CKO_SECRET_KEY, attrs))
        return attrs


register(C.CKM_HKDF_DERIVE, HkdfDerive())
register(C.CKM_HKDF_KEY_GEN, SecretKeyGen(C.CKK_HKDF), MIN_LEN * 8, MAX_LEN * 8)
register(C.CKM_PKCS5_PBKD2, Pbkdf2())
