"""Key derivation by encryption (CKM_*_ENCRYPT_DATA), checked against a plain
`cryptography` encryption of the same data."""

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provider import constants as C
from provider.mechanisms import registry
from provider.mechanisms.params import CbcEncryptDataParams
from provider.objects import Obj

from .mech import impl, rv

AES_KEY = bytes(range(32))
DATA = bytes(range(100, 132))
IV = bytes(range(16))


def key(value=AES_KEY, key_type=C.CKK_AES):
    return Obj(1, "u", {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_VALUE: value})


def encrypt(mode, data):
    enc = Cipher(algorithms.AES(AES_KEY), mode).encryptor()
    return enc.update(data) + enc.finalize()


def test_aes_ecb_and_cbc_encrypt_data():
    made = impl(C.CKM_AES_ECB_ENCRYPT_DATA).derive(key(), DATA, {C.CKA_KEY_TYPE: C.CKK_GENERIC_SECRET}, None)
    assert made[C.CKA_VALUE] == encrypt(modes.ECB(), DATA)
    made = impl(C.CKM_AES_CBC_ENCRYPT_DATA).derive(
        key(), CbcEncryptDataParams(IV, DATA), {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 16}, None)
    assert made[C.CKA_VALUE] == encrypt(modes.CBC(IV), DATA)[:16]


@pytest.mark.parametrize("mech, param, template, code", [
    (C.CKM_AES_ECB_ENCRYPT_DATA, DATA[:15], {}, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_AES_ECB_ENCRYPT_DATA, b"", {}, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_AES_ECB_ENCRYPT_DATA, DATA[:16], {C.CKA_KEY_TYPE: C.CKK_AES}, C.CKR_TEMPLATE_INCOMPLETE),
    (C.CKM_AES_ECB_ENCRYPT_DATA, DATA[:16], {C.CKA_VALUE_LEN: 32}, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_AES_CBC_ENCRYPT_DATA, CbcEncryptDataParams(IV[:8], DATA), {}, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_AES_CBC_ENCRYPT_DATA, DATA, {}, C.CKR_MECHANISM_PARAM_INVALID),
])
def test_errors(mech, param, template, code):
    assert rv(impl(mech).derive, key(), param, template, None) == code


def test_base_key_type_must_fit():
    assert rv(impl(C.CKM_DES3_ECB_ENCRYPT_DATA).derive, key(), DATA, {}, None) == C.CKR_KEY_TYPE_INCONSISTENT


def test_flags_are_derive_only():
    for mech in (C.CKM_AES_ECB_ENCRYPT_DATA, C.CKM_AES_CBC_ENCRYPT_DATA,
                 C.CKM_DES3_ECB_ENCRYPT_DATA, C.CKM_DES3_CBC_ENCRYPT_DATA):
        assert registry.get(mech).flags == C.CKF_DERIVE
