"""AES family through the registry, with published known-answer vectors.

Sources: NIST SP 800-38A appendix F (ECB, CBC, CTR), McGrew & Viega "The GCM mode
of operation" test cases 2 and 4, RFC 3394 §4.1-4.6, RFC 5649 §6, RFC 4493 §4,
FIPS-197 / AESAVS (AES-128 of a zero block under a zero key, for the check value).
"""

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms import registry
from provider.mechanisms.params import CtrParams, GcmParams
from provider.objects import Obj

H = bytes.fromhex


def key(value: bytes, key_type: int = C.CKK_AES) -> Obj:
    return Obj(1, "k", {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_VALUE: value})


def impl(mech: int):
    return registry.get(mech).impl


def rv(excinfo) -> int:
    return excinfo.value.rv


# --- SP 800-38A -----------------------------------------------------------------------
K128 = H("2b7e151628aed2a6abf7158809cf4f3c")
K256 = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
PT = H("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
       "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
ECB128 = H("3ad77bb40d7a3660a89ecaf32466ef97" "f5d3d58503b9699de785895a96fdbaaf"
           "43b1cd7f598ece23881b00e3ed030688" "7b0c785e27e8ad3f8223207104725dd4")
ECB256 = H("f3eed1bdb5d2a03c064b5a7e3db181f8" "591ccb10d410ed26dc5ba74a31362870"
           "b6ed21b99ca6f4f9f153e7b1beafed1d" "23304b7a39f9f3ff067d8d8f9e24ecc7")
CBC_IV = H("000102030405060708090a0b0c0d0e0f")
CBC128 = H("7649abac8119b246cee98e9b12e9197d" "5086cb9b507219ee95db113a917678b2"
           "73bed6b8e3c1743b7116e69e22229516" "3ff1caa1681fac09120eca307586e1a7")
CTR_CB = H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
CTR128 = H("874d6191b620e3261bef6864990db6ce" "9806f66b7970fdff8617187bb9fffdff"
           "5ae4df3edbd5d35e5b4f09020db03eab" "1e031dda2fbe03d1792170a0f3009cee")


@pytest.mark.parametrize("k, ct", [(K128, ECB128), (K256, ECB256)])
def test_ecb_sp800_38a(k, ct):
    assert impl(C.CKM_AES_ECB).encrypt_init(key(k), None).oneshot(PT) == ct
    assert impl(C.CKM_AES_ECB).decrypt_init(key(k), None).oneshot(ct) == PT


def test_cbc_sp800_38a_single_and_multipart():
    mech = impl(C.CKM_AES_CBC)
    assert mech.encrypt_init(key(K128), CBC_IV).oneshot(PT) == CBC128
    ctx = mech.encrypt_init(key(K128), CBC_IV)
    out = ctx.update(PT[:5]) + ctx.update(PT[5:40]) + ctx.update(PT[40:]) + ctx.final()
    assert out == CBC128
    ctx = mech.decrypt_init(key(K128), CBC_IV)
    assert ctx.update(CBC128[:23]) + ctx.update(CBC128[23:]) + ctx.final() == PT


def test_ctr_sp800_38a():
    param = CtrParams(128, CTR_CB)
    assert impl(C.CKM_AES_CTR).encrypt_init(key(K128), param).oneshot(PT) == CTR128
    ctx = impl(C.CKM_AES_CTR).decrypt_init(key(K128), param)
    assert ctx.update(CTR128[:7]) + ctx.update(CTR128[7:]) + ctx.final() == PT


def test_ctr_32_bit_counter_matches_full_block_counter_when_no_wrap():
    # a 32-bit counter at 0xfcfdfeff has room for the 4 blocks: same stream as F.5.1
    assert impl(C.CKM_AES_CTR).encrypt_init(key(K128), CtrParams(32, CTR_CB)).oneshot(PT) == CTR128


def test_ctr_refuses_to_wrap_the_counter():
    mech = impl(C.CKM_AES_CTR)
    # 8 counter bits at 0xff: exactly one block left
    last = CtrParams(8, bytes(15) + b"\xff")
    assert len(mech.encrypt_init(key(K128), last).oneshot(bytes(16))) == 16
    with pytest.raises(PKCS11Error) as e:
        mech.encrypt_init(key(K128), last).oneshot(bytes(17))
    assert rv(e) == C.CKR_DATA_LEN_RANGE
    # multi-part: 1 counter bit at 0 -> two blocks; the third byte past them fails
    ctx = mech.encrypt_init(key(K128), CtrParams(1, bytes(16)))
    ctx.update(bytes(20))
    ctx.update(bytes(12))
    with pytest.raises(PKCS11Error) as e:
        ctx.update(b"x")
    assert rv(e) == C.CKR_DATA_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        mech.decrypt_init(key(K128), CtrParams(1, bytes(15) + b"\x01")).oneshot(bytes(17))
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE


@pytest.mark.parametrize("param", [CtrParams(0, CTR_CB), CtrParams(129, CTR_CB), CtrParams(64, CTR_CB[:15]),
                                   CTR_CB, None])
def test_ctr_bad_params(param):
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CTR).encrypt_init(key(K128), param)
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


# --- block length rules, padding -------------------------------------------------------
@pytest.mark.parametrize("mech, param", [(C.CKM_AES_ECB, None), (C.CKM_AES_CBC, CBC_IV)])
def test_unpadded_modes_need_whole_blocks(mech, param):
    with pytest.raises(PKCS11Error) as e:
        impl(mech).encrypt_init(key(K128), param).oneshot(PT[:17])
    assert rv(e) == C.CKR_DATA_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        impl(mech).decrypt_init(key(K128), param).oneshot(ECB128[:31])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE


def test_cbc_pad_round_trip_and_padding_shape():
    mech = impl(C.CKM_AES_CBC_PAD)
    for n in (0, 1, 15, 16, 17, 64):
        ct = mech.encrypt_init(key(K128), CBC_IV).oneshot(PT[:n] if n <= 64 else bytes(n))
        assert len(ct) == (n // 16 + 1) * 16
        assert mech.decrypt_init(key(K128), CBC_IV).oneshot(ct) == PT[:n]
    # a whole-block input gets a whole padding block: the first blocks equal plain CBC
    assert mech.encrypt_init(key(K128), CBC_IV).oneshot(PT)[:64] == CBC128


def test_cbc_pad_multipart_decrypt_holds_back_last_block():
    ct = impl(C.CKM_AES_CBC_PAD).encrypt_init(key(K128), CBC_IV).oneshot(PT[:40])   # 48 bytes
    ctx = impl(C.CKM_AES_CBC_PAD).decrypt_init(key(K128), CBC_IV)
    assert ctx.update(ct[:32]) == PT[:16]          # second block held back
    assert ctx.update(ct[32:]) == PT[16:32]        # third (padded) block held back
    assert ctx.final() == PT[32:40]


def test_cbc_pad_bad_padding():
    # CBC of PT's first block: its last plaintext byte 0x2a is no valid padding
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CBC_PAD).decrypt_init(key(K128), CBC_IV).oneshot(CBC128[:16])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_INVALID
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CBC_PAD).decrypt_init(key(K128), CBC_IV).oneshot(CBC128[:20])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE


@pytest.mark.parametrize("iv", [CBC_IV[:15], CBC_IV + b"\0", None, b""])
def test_cbc_bad_iv_length(iv):
    for mech in (C.CKM_AES_CBC, C.CKM_AES_CBC_PAD):
        with pytest.raises(PKCS11Error) as e:
            impl(mech).encrypt_init(key(K128), iv)
        assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_ecb_refuses_a_parameter():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_ECB).encrypt_init(key(K128), CBC_IV)
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


@pytest.mark.parametrize("mech, param", [
    (C.CKM_AES_ECB, None), (C.CKM_AES_CBC, CBC_IV), (C.CKM_AES_CBC_PAD, CBC_IV),
    (C.CKM_AES_CTR, CtrParams(128, CTR_CB)), (C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128)),
    (C.CKM_AES_KEY_WRAP, None), (C.CKM_AES_KEY_WRAP_PAD, None)])
def test_wrong_key_type(mech, param):
    for method in ("encrypt_init", "decrypt_init"):
        with pytest.raises(PKCS11Error) as e:
            getattr(impl(mech), method)(key(K128, C.CKK_GENERIC_SECRET), param)
        assert rv(e) == C.CKR_KEY_TYPE_INCONSISTENT


def test_wrong_key_length_in_object():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_ECB).encrypt_init(key(K128[:15]), None)
    assert rv(e) == C.CKR_KEY_SIZE_RANGE


# --- GCM -----------------------------------------------------------------------------
GCM4_K = H("feffe9928665731c6d6a8f9467308308")
GCM4_IV = H("cafebabefacedbaddecaf888")
GCM4_P = H("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
           "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
GCM4_A = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM4_C = H("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
           "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091")
GCM4_T = H("5bc94fbc3221a5db94fae95ae7121a47")


def gcm(tag_bits=128, iv=GCM4_IV, aad=GCM4_A):
    return GcmParams(iv, len(iv) * 8, aad, tag_bits)


def test_gcm_test_case_2():
    out = impl(C.CKM_AES_GCM).encrypt_init(key(bytes(16)), GcmParams(bytes(12), 96, b"", 128)).oneshot(bytes(16))
    assert out == H("0388dace60b6a392f328c2b971b2fe78" "ab6e47d42cec13bdf53a67b21257bddf")


def test_gcm_test_case_4_single_and_multipart():
    mech = impl(C.CKM_AES_GCM)
    assert mech.encrypt_init(key(GCM4_K), gcm()).oneshot(GCM4_P) == GCM4_C + GCM4_T
    ctx = mech.encrypt_init(key(GCM4_K), gcm())
    assert ctx.update(GCM4_P[:13]) + ctx.update(GCM4_P[13:]) + ctx.final() == GCM4_C + GCM4_T
    assert mech.decrypt_init(key(GCM4_K), gcm()).oneshot(GCM4_C + GCM4_T) == GCM4_P


def test_gcm_truncated_tag():
    mech = impl(C.CKM_AES_GCM)
    assert mech.encrypt_init(key(GCM4_K), gcm(96)).oneshot(GCM4_P) == GCM4_C + GCM4_T[:12]
    assert mech.decrypt_init(key(GCM4_K), gcm(104)).oneshot(GCM4_C + GCM4_T[:13]) == GCM4_P


def test_gcm_bad_tag_releases_no_plaintext():
    ctx = impl(C.CKM_AES_GCM).decrypt_init(key(GCM4_K), gcm())
    assert ctx.update(GCM4_C) == b""
    assert ctx.update(GCM4_T[:-1] + bytes([GCM4_T[-1] ^ 1])) == b""
    with pytest.raises(PKCS11Error) as e:
        ctx.final()
    assert rv(e) == C.CKR_ENCRYPTED_DATA_INVALID
    with pytest.raises(PKCS11Error) as e:      # wrong AAD
        impl(C.CKM_AES_GCM).decrypt_init(key(GCM4_K), gcm(aad=b"x")).oneshot(GCM4_C + GCM4_T)
    assert rv(e) == C.CKR_ENCRYPTED_DATA_INVALID


def test_gcm_too_short():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_GCM).decrypt_init(key(GCM4_K), gcm()).oneshot(GCM4_T[:15])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE


@pytest.mark.parametrize("param", [gcm(88), gcm(136), gcm(120 + 4), gcm(32), gcm(iv=b"1234567"),
                                   gcm(iv=bytes(129)), GCM4_IV, None])
def test_gcm_bad_params(param):
    for method in ("encrypt_init", "decrypt_init"):
        with pytest.raises(PKCS11Error) as e:
            getattr(impl(C.CKM_AES_GCM), method)(key(GCM4_K), param)
        assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


@pytest.mark.parametrize("bits", [96, 104, 112, 120, 128])
def test_gcm_accepted_tag_lengths(bits):
    ct = impl(C.CKM_AES_GCM).encrypt_init(key(GCM4_K), gcm(bits)).oneshot(b"abc")
    assert len(ct) == 3 + bits // 8
    assert impl(C.CKM_AES_GCM).decrypt_init(key(GCM4_K), gcm(bits)).oneshot(ct) == b"abc"


# --- key wrap ----------------------------------------------------------------------------
KEK = H("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
KEYDATA = H("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
RFC3394 = [  # (KEK bytes, key data bytes, wrapped) §4.1-4.6
    (16, 16, "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
    (24, 16, "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"),
    (32, 16, "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"),
    (24, 24, "031D33264E15D33268F24EC260743EDCE1C6C7DDEE725A936BA814915C6762D2"),
    (32, 24, "A8F9BC1612C68B3FF6E6F4FBE30E71E4769C8B80A32CB8958CD5D17D6B254DA1"),
    (32, 32, "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"),
]


@pytest.mark.parametrize("kek_len, data_len, wrapped", RFC3394)
def test_key_wrap_rfc3394(kek_len, data_len, wrapped):
    mech, kek, data = impl(C.CKM_AES_KEY_WRAP), key(KEK[:kek_len]), KEYDATA[:data_len]
    assert mech.wrap(kek, None, data) == H(wrapped)
    assert mech.unwrap(kek, None, H(wrapped)) == data
    assert mech.wrap(kek, H("A6A6A6A6A6A6A6A6"), data) == H(wrapped)       # the default IV, stated
    assert mech.encrypt_init(kek, None).oneshot(data) == H(wrapped)
    assert mech.decrypt_init(kek, None).oneshot(H(wrapped)) == data


KWP_KEK = H("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
RFC5649 = [
    ("c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"),
    ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
]


@pytest.mark.parametrize("mech", [C.CKM_AES_KEY_WRAP_PAD, C.CKM_AES_KEY_WRAP_KWP])
@pytest.mark.parametrize("data, wrapped", RFC5649)
def test_key_wrap_pad_rfc5649(mech, data, wrapped):
    m, kek = impl(mech), key(KWP_KEK)
    assert m.wrap(kek, None, H(data)) == H(wrapped)
    assert m.unwrap(kek, None, H(wrapped)) == H(data)
    assert m.encrypt_init(kek, H("A65959A6")).oneshot(H(data)) == H(wrapped)
    assert m.decrypt_init(kek, None).oneshot(H(wrapped)) == H(data)


def test_key_wrap_errors():
    kw, kek = impl(C.CKM_AES_KEY_WRAP), key(KEK[:16])
    wrapped = H(RFC3394[0][2])
    with pytest.raises(PKCS11Error) as e:
        kw.wrap(kek, None, bytes(20))
    assert rv(e) == C.CKR_KEY_NOT_WRAPPABLE
    with pytest.raises(PKCS11Error) as e:
        kw.encrypt_init(kek, None).oneshot(bytes(8))
    assert rv(e) == C.CKR_DATA_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        kw.unwrap(kek, None, wrapped[:-1])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        kw.unwrap(kek, None, wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    assert rv(e) == C.CKR_ENCRYPTED_DATA_INVALID
    with pytest.raises(PKCS11Error) as e:
        kw.unwrap(key(KEK[16:32]), None, wrapped)
    assert rv(e) == C.CKR_ENCRYPTED_DATA_INVALID
    with pytest.raises(PKCS11Error) as e:
        kw.wrap(kek, bytes(8), KEYDATA[:16])
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_KEY_WRAP_PAD).unwrap(key(KWP_KEK), None, H(RFC5649[1][1])[:8])
    assert rv(e) == C.CKR_ENCRYPTED_DATA_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_KEY_WRAP_PAD).wrap(key(KWP_KEK), H("A6A6A6A6A6A6A6A6"), b"k")
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_key_wrap_is_single_part():
    assert impl(C.CKM_AES_KEY_WRAP).encrypt_init(key(K128), None).multipart is False
    assert impl(C.CKM_AES_GCM).encrypt_init(key(K128), gcm()).multipart is True


# --- CMAC ------------------------------------------------------------------------------
RFC4493 = [(0, "bb1d6929e95937287fa37d129b756746"), (16, "070a16b46b4d4144f79bdd9dd04a287c"),
           (40, "dfa66747de9ae63030ca32611497c827"), (64, "51f0bebf7e3b9d92fc49741779363cfe")]


@pytest.mark.parametrize("n, mac", RFC4493)
def test_cmac_rfc4493(n, mac):
    m = impl(C.CKM_AES_CMAC)
    assert m.sign_init(key(K128), None).oneshot(PT[:n]) == H(mac)
    ctx = m.sign_init(key(K128), None)
    ctx.update(PT[:n // 3])
    ctx.update(PT[n // 3:n])
    assert ctx.final() == H(mac)
    m.verify_init(key(K128), None).oneshot(PT[:n], H(mac))
    assert impl(C.CKM_AES_CMAC_GENERAL).sign_init(key(K128), 4).oneshot(PT[:n]) == H(mac)[:4]
    impl(C.CKM_AES_CMAC_GENERAL).verify_init(key(K128), 4).oneshot(PT[:n], H(mac)[:4])


def test_cmac_verify_failures():
    mac = H(RFC4493[1][1])
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CMAC).verify_init(key(K128), None).oneshot(PT[:16], mac[:15])
    assert rv(e) == C.CKR_SIGNATURE_LEN_RANGE
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CMAC).verify_init(key(K128), None).oneshot(PT[:16], mac[:15] + bytes([mac[15] ^ 1]))
    assert rv(e) == C.CKR_SIGNATURE_INVALID
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CMAC_GENERAL).verify_init(key(K128), 8).oneshot(PT[:16], mac)
    assert rv(e) == C.CKR_SIGNATURE_LEN_RANGE


@pytest.mark.parametrize("param", [0, 17, None, True])
def test_cmac_general_bad_length(param):
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CMAC_GENERAL).sign_init(key(K128), param)
    assert rv(e) == C.CKR_MECHANISM_PARAM_INVALID


def test_cmac_wrong_key_type():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_CMAC).sign_init(key(K128, C.CKK_GENERIC_SECRET), None)
    assert rv(e) == C.CKR_KEY_TYPE_INCONSISTENT


# --- key generation and the key type ----------------------------------------------------------
ZERO_KEY_KCV = H("66e94b")      # AES-128(0^128, 0^128) = 66e94bd4ef8a2c3b884cfa59ca342b2e


@pytest.mark.parametrize("n", [16, 24, 32])
def test_key_gen(n):
    made = impl(C.CKM_AES_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: n})
    assert made[C.CKA_KEY_TYPE] == C.CKK_AES and made[C.CKA_VALUE_LEN] == n and len(made[C.CKA_VALUE]) == n
    assert made[C.CKA_CHECK_VALUE] == registry.key_type(C.CKK_AES).complete(
        C.CKO_SECRET_KEY, {C.CKA_VALUE: made[C.CKA_VALUE]})[C.CKA_CHECK_VALUE]
    other = impl(C.CKM_AES_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: n})
    assert other[C.CKA_VALUE] != made[C.CKA_VALUE]


def test_key_gen_errors():
    with pytest.raises(PKCS11Error) as e:
        impl(C.CKM_AES_KEY_GEN).generate_key(None, {})
    assert rv(e) == C.CKR_TEMPLATE_INCOMPLETE
    for n in (0, 8, 20, 64):
        with pytest.raises(PKCS11Error) as e:
            impl(C.CKM_AES_KEY_GEN).generate_key(None, {C.CKA_VALUE_LEN: n})
        assert rv(e) == C.CKR_ATTRIBUTE_VALUE_INVALID


def test_key_type_complete():
    handler = registry.key_type(C.CKK_AES)
    assert handler.complete(C.CKO_SECRET_KEY, {C.CKA_VALUE: bytes(16)}) == {
        C.CKA_VALUE_LEN: 16, C.CKA_CHECK_VALUE: ZERO_KEY_KCV}
    with pytest.raises(PKCS11Error) as e:
        handler.complete(C.CKO_SECRET_KEY, {C.CKA_VALUE: bytes(17)})
    assert rv(e) == C.CKR_ATTRIBUTE_VALUE_INVALID
    with pytest.raises(PKCS11Error) as e:
        handler.complete(C.CKO_SECRET_KEY, {})
    assert rv(e) == C.CKR_TEMPLATE_INCOMPLETE
    with pytest.raises(PKCS11Error) as e:
        handler.complete(C.CKO_SECRET_KEY, {C.CKA_VALUE: bytes(16), C.CKA_VALUE_LEN: 32})
    assert rv(e) == C.CKR_TEMPLATE_INCONSISTENT


# --- CK_MECHANISM_INFO ------------------------------------------------------------------------
ENC_DEC = C.CKF_ENCRYPT | C.CKF_DECRYPT
FLAGS = {
    C.CKM_AES_KEY_GEN: C.CKF_GENERATE,
    C.CKM_AES_ECB: ENC_DEC,
    C.CKM_AES_CBC: ENC_DEC,
    C.CKM_AES_CBC_PAD: ENC_DEC,
    C.CKM_AES_CTR: ENC_DEC,
    C.CKM_AES_GCM: ENC_DEC | C.CKF_MESSAGE_ENCRYPT | C.CKF_MESSAGE_DECRYPT,
    C.CKM_AES_KEY_WRAP: ENC_DEC | C.CKF_WRAP | C.CKF_UNWRAP,
    C.CKM_AES_KEY_WRAP_PAD: ENC_DEC | C.CKF_WRAP | C.CKF_UNWRAP,
    C.CKM_AES_KEY_WRAP_KWP: ENC_DEC | C.CKF_WRAP | C.CKF_UNWRAP,
    C.CKM_AES_CMAC: C.CKF_SIGN | C.CKF_VERIFY,
    C.CKM_AES_CMAC_GENERAL: C.CKF_SIGN | C.CKF_VERIFY,
}


@pytest.mark.parametrize("mech, flags", FLAGS.items(), ids=[C.name_of("CKM_", m) for m in FLAGS])
def test_mechanism_info(mech, flags):
    entry = registry.get(mech)
    assert entry.flags == flags
    assert (entry.min_key, entry.max_key) == (16, 32)
