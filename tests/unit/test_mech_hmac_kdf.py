"""HMAC, generic secret keys, HKDF and PBKDF2 through the registry.

Vectors: RFC 4231 (HMAC-SHA-224/256/384/512, test cases 1, 2, 5, 6), RFC 2202
(HMAC-SHA-1 and HMAC-MD5 test case 2), RFC 5869 (HKDF-SHA-256 test cases 1-3),
RFC 6070 (PBKDF2-HMAC-SHA1).
"""

import hashlib

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms import registry
from provider.mechanisms.params import HkdfParams, Pbkdf2Params
from provider.objects import Obj

H = bytes.fromhex


def key(value: bytes, key_type: int = C.CKK_GENERIC_SECRET) -> Obj:
    return Obj(1, "k", {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_VALUE: value})


def impl(mech: int):
    return registry.get(mech).impl


def rv(excinfo) -> int:
    return excinfo.value.rv


# --- HMAC ----------------------------------------------------------------------------
TC1 = (b"\x0b" * 20, b"Hi There")
TC2 = (b"Jefe", b"what do ya want for nothing?")
TC6 = (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")
HMAC_VECTORS = [
    (C.CKM_SHA224_HMAC, TC1, "896fb1128abbdf196832107cd49df33f47b4b1169912ba4f53684b22"),
    (C.CKM_SHA256_HMAC, TC1, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (C.CKM_SHA384_HMAC, TC1, "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
                             "faea9ea9076ede7f4af152e8b2fa9cb6"),
    (C.CKM_SHA512_HMAC, TC1, "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                             "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (C.CKM_SHA224_HMAC, TC2, "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44"),
    (C.CKM_SHA256_HMAC, TC2, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (C.CKM_SHA384_HMAC, TC2, "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                             "8e2240ca5e69e2c78b3239ecfab21649"),
    (C.CKM_SHA512_HMAC, TC2, "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                             "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    (C.CKM_SHA256_HMAC, TC6, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (C.CKM_SHA_1_HMAC, TC2, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),          # RFC 2202
    (C.CKM_MD5_HMAC, TC2, "750c783e6ab0b503eaa86e310a5db738"),                    # RFC 2202
]


@pytest.mark.parametrize("mech, vector, mac", HMAC_VECTORS)
def test_hmac_known_answers(mech, vector, mac):
    k, data = vector
    m = impl(mech)
    assert m.sign_init(key(k), None).oneshot(data) == H(mac)
    ctx = m.sign_init(key(k), None)
    ctx.update(data[:3])
    ctx.update(b"")
    ctx.update(data[3:])
    assert ctx.final() == H(mac)
    m.verify_init(key(k), None).oneshot(data, H(mac))
    ctx = m.verify_init(key(k), None)
    ctx.update(data)
    ctx.final(H(mac))


def test_hmac_general_truncation_rfc4231_tc5():
    k, data = b"\x0c" * 20, b"Test With Truncation"
    m = impl(C.CKM_SHA256_HMAC_GENERAL)
    assert m.sign_init(key(k), 16).oneshot(data) == H("a3b6167473100ee06e0c796c2955552b")
    m.verify_init(key(k), 16).oneshot(data, H("a3b6167473100ee06e0c796c2955552b"))


def test_sha3_hmac_matches_hashlib_construction():
    # no RFC vectors for SHA-3 HMAC: compare with Python's hmac over hashlib (a second implementation)
    import hmac as pyhmac
    for mech, name in ((C.CKM_SHA3_256_HMAC, "sha3_256"), (C.CKM_SHA3_512_HMAC, "sha3_512")):
        expected = pyhmac.new(b"k" * 40, b"data", getattr(hashlib, name)).digest()
        assert impl(mech).sign_init(key(b"k" * 40), None).oneshot(b"data") == expected


@pytest.mark.parametrize("mech, size", [(C.CKM_SHA256_HMAC_GENERAL, 32), (C.CKM_SHA_1_HMAC_GENERAL, 20),
                                        (C.CKM_SHA512_HMAC_GENERAL, 64)])
def test_hmac_general_length_bounds(mech, size):
    for bad in (0, size + 1, None, True):
        with pytest.raises(PKCS11Error) as e:
            impl(mech).sign_init(key(b"k" * 32), bad)
        assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID
    assert len(impl(mech).sign_init(key(b"k" * 32), size).oneshot(b"x")) == size
    assert len(impl(mech).sign_init(key(b"k" * 32), 1).oneshot(b"x")) == 1


def test_hmac_refuses_a_parameter():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_SHA256_HMAC).sign_init(key(b"k" * 32), 16)
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_hmac_key_types():
    k = b"\x0b" * 20
    impl(C.CKM_SHA256_HMAC).sign_init(key(k, C.CKK_SHA256_HMAC), None)
    for wrong in (C.CKK_AES, C.CKK_SHA_1_HMAC, C.CKK_HKDF):
        with pytest.raises(PKCS11Error) as e:
            impl(C.CKM_SHA256_HMAC).sign_init(key(k, wrong), None)
        assert rv(e) == C.CKR_KEY_TYPE_INCONSISTENT


def test_hmac_verify_failures():
    k, data = TC1
    mac = H(HMAC_VECTORS[1][2])
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_SHA256_HMAC).verify_init(key(k), None).oneshot(data, mac[:31])
    assert rv(e) == C.CKR_SIGNATURE_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_SHA256_HMAC).verify_init(key(k), None).oneshot(data, bytes([mac[0] ^ 1]) + mac[1:])
    assert rv(e) == C.CKR_SIGNATURE_INVALID
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_SHA256_HMAC).verify_init(key(k), None).oneshot(data + b"!", mac)
    assert rv(e) == C.CKR_SIGNATURE_INVALID


# --- generic secret keys ------------------------------------------------------------------
def test_generic_key_gen():
    made = impl(C.CKM_GENERIC_SECRET_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: 20})
    assert made[C.CKA_KEY_TYPE] == C.CKK_GENERIC_SECRET
    assert len(made[C.CKA_VALUE]) == made[C.CKA_VALUE_LEN] == 20
    assert made[C.CKA_CHECK_VALUE] == hashlib.sha1(made[C.CKA_VALUE]).digest()[:3]
    assert len(impl(C.CKM_GENERIC_SECRET_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: 512})[C.CKA_VALUE]) == 512


def test_generic_key_gen_errors():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_GENERIC_SECRET_KEY_GEN).generate_key(None, {})
    assert rv(e) == C.CKR_TEMPLATE_INCOMPLETE
    for n in (0, 513):
        with pytest.raises(PKCS11Error) as e:
            impl(C.CKM_GENERIC_SECRET_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: n})
        assert rv(e) == C.CKR_ATTRIBUTE_VALUE_INVALID


@pytest.mark.parametrize("kt", [C.CKK_GENERIC_SECRET, C.CKK_SHA256_HMAC, C.CKK_SHA3_512_HMAC, C.CKK_HKDF])
def test_generic_key_type_complete(kt):
    handler = registry.key_type(kt)
    assert handler.complete(C.CKO_SECRET_KEY, {C.CKA_VALUE: b"abc"}) == {
        C.CKA_VALUE_LEN: 3, C.CKA_CHECK_VALUE: H("a9993e")}          # SHA-1("abc") = a9993e36...
    for attrs, code in (({}, C.CKR_TEMPLATE_INCOMPLETE), ({C.CKA_VALUE: b""}, C.CKR_ATTRIBUTE_VALUE_INVALID),
                        ({C.CKA_VALUE: bytes(513)}, C.CKR_ATTRIBUTE_VALUE_INVALID)):
        with pytest.raises(PKCS11Error) as e:
            handler.complete(C.CKO_SECRET_KEY, attrs)
        assert rv(e) == code


# --- HKDF (RFC 5869) ---------------------------------------------------------------------
HKDF_CASES = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (bytes(range(0x00, 0x50)).hex(), bytes(range(0x60, 0xb0)).hex(), bytes(range(0xb0, 0x100)).hex(), 82,
     "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
     "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42,
     "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


def hkdf(extract=True, expand=True, salt_type=C.CKF_HKDF_SALT_NULL, salt=b"", info=b"", prf=C.CKM_SHA256,
         salt_key=0):
    return HkdfParams(extract, expand, prf, salt_type, salt, salt_key, info)


def no_resolve(handle):
    raise AssertionError("no key handle expected")


@pytest.mark.parametrize("ikm, salt, info, n, prk, okm", HKDF_CASES)
def test_hkdf_rfc5869(ikm, salt, info, n, prk, okm):
    derive = impl(C.CKM_HKDF_DERIVE).derive
    salt_type = C.CKF_HKDF_SALT_DATA if salt else C.CKF_HKDF_SALT_NULL
    both = hkdf(salt_type=salt_type, salt=H(salt), info=H(info))
    assert derive(key(H(ikm)), both, {C.CKA_VALUE_LEN: n}, no_resolve)[C.CKA_VALUE] == H(okm)
    extract = hkdf(expand=False, salt_type=salt_type, salt=H(salt))
    assert derive(key(H(ikm)), extract, {}, no_resolve)[C.CKA_VALUE] == H(prk)
    expand = hkdf(extract=False, info=H(info))
    assert derive(key(H(prk), C.CKK_HKDF), expand, {C.CKA_VALUE_LEN: n}, no_resolve)[C.CKA_VALUE] == H(okm)


def test_hkdf_salt_from_a_key():
    ikm, salt, info, n, _, okm = HKDF_CASES[0]
    salt_key = key(H(salt))
    seen = []

    def resolve(handle):
        seen.append(handle)
        return salt_key
    param = hkdf(salt_type=C.CKF_HKDF_SALT_KEY, salt_key=77, info=H(info))
    assert impl(C.CKM_HKDF_DERIVE).derive(key(H(ikm)), param, {C.CKA_VALUE_LEN: n}, resolve)[C.CKA_VALUE] == H(okm)
    assert seen == [77]
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_HKDF_DERIVE).derive(key(H(ikm)), param, {C.CKA_VALUE_LEN: n},
                                       lambda h: key(bytes(16), C.CKK_AES))
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_hkdf_output_length_rules():
    derive, base = impl(C.CKM_HKDF_DERIVE).derive, key(b"\x0b" * 22)
    assert len(derive(base, hkdf(), {}, no_resolve)[C.CKA_VALUE]) == 32          # generic: hash length
    aes = derive(base, hkdf(), {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 16}, no_resolve)
    assert len(aes[C.CKA_VALUE]) == 16
    cases = [
        (hkdf(), {C.CKA_KEY_TYPE: C.CKK_AES}, C.CKR_TEMPLATE_INCOMPLETE),
        (hkdf(expand=False), {C.CKA_VALUE_LEN: 16}, C.CKR_TEMPLATE_INCONSISTENT),
        (hkdf(), {C.CKA_VALUE_LEN: 255 * 32 + 1}, C.CKR_ATTRIBUTE_VALUE_INVALID),
        (hkdf(), {C.CKA_KEY_TYPE: C.CKK_RSA, C.CKA_VALUE_LEN: 16}, C.CKR_TEMPLATE_INCONSISTENT),
    ]
    for param, template, code in cases:
        with pytest.raises(PKCS11Error) as e:
            derive(base, param, template, no_resolve)
        assert rv(e) == code


@pytest.mark.parametrize("param", [
    hkdf(extract=False, expand=False), hkdf(prf=C.CKM_AES_ECB), hkdf(salt_type=0),
    hkdf(salt_type=C.CKF_HKDF_SALT_DATA, salt=b""),       # SALT_DATA needs a salt
    None, b"params"])
def test_hkdf_bad_params(param):
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_HKDF_DERIVE).derive(key(b"k" * 32), param, {C.CKA_VALUE_LEN: 32}, no_resolve)
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_hkdf_base_key_type():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_HKDF_DERIVE).derive(key(bytes(16), C.CKK_AES), hkdf(salt_type=C.CKF_HKDF_SALT_DATA, salt=b"s"), {}, no_resolve)
    assert rv(e) == C.CKR_KEY_TYPE_INCONSISTENT


def test_hkdf_key_gen():
    made = impl(C.CKM_HKDF_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: 32})
    assert made[C.CKA_KEY_TYPE] == C.CKK_HKDF and len(made[C.CKA_VALUE]) == 32
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_HKDF_KEY_GEN).generate_key(None, {})
    assert rv(e) == C.CKR_TEMPLATE_INCOMPLETE


# --- PBKDF2 (RFC 6070) -------------------------------------------------------------------
RFC6070 = [
    (b"password", b"salt", 1, 20, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),
    (b"password", b"salt", 2, 20, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"),
    (b"password", b"salt", 4096, 20, "4b007901b765489abead49d926f721d065a429c1"),
    (b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 25,
     "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"),
    (b"pass\0word", b"sa\0lt", 4096, 16, "56fa6aa75548099dcc37d7f03425e0c3"),
]


def pbkdf2(password=b"password", salt=b"salt", iterations=1, prf=C.CKP_PKCS5_PBKD2_HMAC_SHA1,
           source=C.CKZ_SALT_SPECIFIED):
    return Pbkdf2Params(source, salt, iterations, prf, b"", password)


@pytest.mark.parametrize("password, salt, iterations, n, dk", RFC6070)
def test_pbkdf2_rfc6070(password, salt, iterations, n, dk):
    made = impl(C.CKM_PKCS5_PBKD2).generate_key(pbkdf2(password, salt, iterations), {C.CKA_VALUE_LEN: n})
    assert made[C.CKA_VALUE] == H(dk)
    assert made[C.CKA_KEY_TYPE] == C.CKK_GENERIC_SECRET and made[C.CKA_VALUE_LEN] == n


def test_pbkdf2_aes_key_and_other_prfs():
    made = impl(C.CKM_PKCS5_PBKD2).generate_key(
        pbkdf2(iterations=2, prf=C.CKP_PKCS5_PBKD2_HMAC_SHA256), {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 32})
    assert made[C.CKA_VALUE] == hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2, 32)
    assert made[C.CKA_KEY_TYPE] == C.CKK_AES and len(made[C.CKA_CHECK_VALUE]) == 3
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_PKCS5_PBKD2).generate_key(pbkdf2(), {C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_VALUE_LEN: 20})
    assert rv(e) == C.CKR_ATTRIBUTE_VALUE_INVALID


@pytest.mark.parametrize("param, template, code", [
    (pbkdf2(), {}, C.CKR_TEMPLATE_INCOMPLETE),
    (pbkdf2(), {C.CKA_KEY_TYPE: C.CKK_AES}, C.CKR_TEMPLATE_INCOMPLETE),
    (pbkdf2(source=2), {C.CKA_VALUE_LEN: 16}, C.CKR_MECHANISM_PARAM_INVALID),
    (pbkdf2(prf=2), {C.CKA_VALUE_LEN: 16}, C.CKR_MECHANISM_PARAM_INVALID),
    (pbkdf2(iterations=0), {C.CKA_VALUE_LEN: 16}, C.CKR_MECHANISM_PARAM_INVALID),
    (None, {C.CKA_VALUE_LEN: 16}, C.CKR_MECHANISM_PARAM_INVALID),
    (pbkdf2(), {C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_VALUE_LEN: 16}, C.CKR_TEMPLATE_INCONSISTENT),
])
def test_pbkdf2_errors(param, template, code):
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_PKCS5_PBKD2).generate_key(param, template)
    assert rv(e) == code


# --- CK_MECHANISM_INFO ----------------------------------------------------------------------
SIGN_VERIFY = C.CKF_SIGN | C.CKF_VERIFY
HMAC_SIZES = {C.CKM_MD5_HMAC: 16, C.CKM_SHA_1_HMAC: 20, C.CKM_SHA224_HMAC: 28, C.CKM_SHA256_HMAC: 32,
              C.CKM_SHA384_HMAC: 48, C.CKM_SHA512_HMAC: 64, C.CKM_SHA3_224_HMAC: 28, C.CKM_SHA3_256_HMAC: 32,
              C.CKM_SHA3_384_HMAC: 48, C.CKM_SHA3_512_HMAC: 64}
INFO = {
    **{m: (SIGN_VERIFY, n, 512) for m, n in HMAC_SIZES.items()},
    **{m + 1: (SIGN_VERIFY, n, 512) for m, n in HMAC_SIZES.items()},      # *_HMAC_GENERAL = *_HMAC + 1
    C.CKM_GENERIC_SECRET_KEY_GEN: (C.CKF_GENERATE, 8, 4096),
    C.CKM_HKDF_KEY_GEN: (C.CKF_GENERATE, 8, 4096),
    C.CKM_HKDF_DERIVE: (C.CKF_DERIVE, 0, 0),
    C.CKM_PKCS5_PBKD2: (C.CKF_GENERATE, 0, 0),
}


@pytest.mark.parametrize("mech, info", INFO.items(), ids=[C.name_of("CKM_", m) for m in INFO])
def test_mechanism_info(mech, info):
    entry = registry.get(mech)
    assert (entry.flags, entry.min_key, entry.max_key) == info


def test_general_twins_are_the_spec_numbers():
    assert C.CKM_SHA256_HMAC_GENERAL == 0x252 and C.CKM_SHA3_512_HMAC_GENERAL == 0x2D2
    assert C.name_of("CKM_", C.CKM_SHA256_HMAC + 1) == "CKM_SHA256_HMAC_GENERAL"


def test_hkdf_data_not_offered():
    with pytest.raises(PKCS11Error) as e:
        registry.get(C.CKM_HKDF_DATA)
    assert rv(e) == C.CKR_MECHANISM_INVALID
