"""Triple DES (legacy): a known answer made by a second implementation (OpenSSL:
`openssl enc -des-ede3 -K <KEY> -nopad -provider legacy -provider default`),
round trips, parity, padding, errors and flags."""

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms import registry
from provider.objects import Obj

KEY = bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123")
PLAIN = b"The quick brown fox jump"      # 24 bytes: three blocks
# openssl enc -des-ede3 -K <KEY> -nopad  /  -des-ede3-cbc -iv 0001020304050607 -nopad
ECB_CT = bytes.fromhex("1ccf23869d09333ecce21c8112256fe668d5c05dd9b6b900")
IV = bytes.fromhex("0001020304050607")


def key(value=KEY, key_type=C.CKK_DES3):
    return Obj(1, "u", {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_VALUE: value})


def run(mech, method, k, param, data):
    ctx = getattr(registry.get(mech).impl, method)(k, param)
    return ctx.oneshot(data)


def test_ecb_known_answer_and_round_trip():
    assert run(C.CKM_DES3_ECB, "encrypt_init", key(), None, PLAIN) == ECB_CT
    assert run(C.CKM_DES3_ECB, "decrypt_init", key(), None, ECB_CT) == PLAIN


def test_cbc_pad_round_trip_multipart():
    impl = registry.get(C.CKM_DES3_CBC_PAD).impl
    enc = impl.encrypt_init(key(), IV)
    ct = enc.update(PLAIN[:5]) + enc.update(PLAIN[5:]) + enc.final()
    assert len(ct) == 32                    # a whole block of padding after 24 bytes
    dec = impl.decrypt_init(key(), IV)
    assert dec.update(ct[:8]) + dec.update(ct[8:]) + dec.final() == PLAIN
    assert run(C.CKM_DES3_CBC, "decrypt_init", key(), IV, ct)[:24] == PLAIN


@pytest.mark.parametrize("mech, param, data, code", [
    (C.CKM_DES3_CBC, IV[:7], PLAIN, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_DES3_ECB, b"x" * 8, PLAIN, C.CKR_MECHANISM_PARAM_INVALID),
    (C.CKM_DES3_ECB, None, PLAIN[:10], C.CKR_DATA_LEN_RANGE),
])
def test_errors(mech, param, data, code):
    with pytest.raises(PKCS11Error) as err:
        run(mech, "encrypt_init", key(), param, data)
    assert err.value.rv == code


def test_wrong_key_type_is_refused():
    with pytest.raises(PKCS11Error) as err:
        run(C.CKM_DES3_ECB, "encrypt_init", key(bytes(16), C.CKK_AES), None, PLAIN)
    assert err.value.rv == C.CKR_KEY_TYPE_INCONSISTENT


def test_generated_keys_have_odd_parity_and_check_value():
    made = registry.get(C.CKM_DES3_KEY_GEN).impl.generate_key(None, {})
    value = made[C.CKA_VALUE]
    assert len(value) == 24 and all(bin(b).count("1") % 2 == 1 for b in value)
    assert made[C.CKA_CHECK_VALUE] == run(C.CKM_DES3_ECB, "encrypt_init", key(value), None, bytes(8))[:3]


def test_mechanism_info_flags():
    assert registry.get(C.CKM_DES3_KEY_GEN).flags == C.CKF_GENERATE
    for mech in (C.CKM_DES3_ECB, C.CKM_DES3_CBC, C.CKM_DES3_CBC_PAD):
        entry = registry.get(mech)
        assert entry.flags == C.CKF_ENCRYPT | C.CKF_DECRYPT
        assert (entry.min_key, entry.max_key) == (192, 192)
