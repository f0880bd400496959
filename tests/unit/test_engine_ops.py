"""Cryptographic operations through the engine: the operation rules of the spec."""

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms.params import Ecdh1DeriveParams, GcmParams, Mechanism
from provider.session import Deferred

from .conftest import RW, USER_PIN
from .tmpl import T, ulong

P256_OID = bytes.fromhex("06082a8648ce3d030107")
GCM = Mechanism(C.CKM_AES_GCM, GcmParams(b"\x01" * 12, 96, b"aad", 128))


def rv(fn, *args):
    with pytest.raises(PKCS11Error) as info:
        fn(*args)
    return info.value.rv


def aes_key(lib, s, **extra):
    t = dict(VALUE_LEN=32, LABEL=b"gen-aes")
    t.update(extra)
    return lib.generate_key(s, Mechanism(C.CKM_AES_KEY_GEN), T(**t))


def ec_pair(lib, s, **priv):
    return lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN),
                                 T(EC_PARAMS=P256_OID, LABEL=b"ec"), T(LABEL=b"ec", **priv))


def test_generated_key_attributes(user):
    lib, s = user
    k = aes_key(lib, s)
    local, always, never, mech = lib.get_attribute_value(
        s, k, [C.CKA_LOCAL, C.CKA_ALWAYS_SENSITIVE, C.CKA_NEVER_EXTRACTABLE, C.CKA_KEY_GEN_MECHANISM])
    assert (local, always, never) == (b"\x01", b"\x01", b"\x01")
    assert ulong(mech) == C.CKM_AES_KEY_GEN
    assert rv(lib.generate_key, s, Mechanism(C.CKM_AES_KEY_GEN), T(VALUE_LEN=16, VALUE=b"x" * 16)) == C.CKR_TEMPLATE_INCONSISTENT
    assert rv(lib.generate_key, s, Mechanism(C.CKM_AES_KEY_GEN),
              T(VALUE_LEN=16, KEY_TYPE=C.CKK_AES, LOCAL=True)) == C.CKR_TEMPLATE_INCONSISTENT
    assert rv(lib.generate_key, s, Mechanism(C.CKM_AES_KEY_GEN),
              T(VALUE_LEN=16, KEY_TYPE=C.CKK_DES3)) == C.CKR_TEMPLATE_INCONSISTENT
    assert rv(lib.generate_key, s, Mechanism(C.CKM_SHA256), T(VALUE_LEN=16)) == C.CKR_MECHANISM_INVALID


def test_gcm_round_trip_and_buffer_too_small(user):
    lib, s = user
    k = aes_key(lib, s)
    lib.encrypt_init(s, GCM, k)
    assert lib.encrypt(s, b"hello world", None) == 11 + 16    # a length query changes nothing
    assert lib.encrypt(s, b"hello world", 4) == 11 + 16       # too small (BUFFER_TOO_SMALL): still active
    ct = lib.encrypt(s, b"hello world", 27)
    assert len(ct) == 27
    assert rv(lib.encrypt, s, b"again", 100) == C.CKR_OPERATION_NOT_INITIALIZED
    lib.decrypt_init(s, GCM, k)
    assert lib.decrypt(s, ct, None) == 11
    assert lib.decrypt(s, ct, 100) == b"hello world"


def test_length_queries_take_no_input(user):
    """Issue 9: a query (twice) before each Update takes nothing; each call with a
    buffer works on its own input; a tampered tag still fails."""
    lib, s = user
    k = aes_key(lib, s)
    lib.encrypt_init(s, GCM, k)
    ct = lib.encrypt(s, b"x" * 144, 200)
    for tag, want in ((ct[-16:], b"x" * 144), (bytes([ct[-16] ^ 1]) + ct[-15:], None)):
        lib.decrypt_init(s, GCM, k)
        got = b""
        for chunk in (ct[:-16], tag):
            assert lib.decrypt_update(s, chunk, None) == len(chunk)    # at least the input's length
            assert lib.decrypt_update(s, chunk, None) == len(chunk)
            got += lib.decrypt_update(s, chunk, len(chunk))
        assert lib.decrypt_final(s, None) == 144
        if want is None:
            assert rv(lib.decrypt_final, s, 144) == C.CKR_ENCRYPTED_DATA_INVALID
        else:
            assert got + lib.decrypt_final(s, 144) == want
    cbc = Mechanism(C.CKM_AES_CBC_PAD, b"\x02" * 16)
    lib.encrypt_init(s, cbc, k)
    out = b""
    for n in (10, 30, 60):
        need = lib.encrypt_update(s, b"p" * n, None)
        assert need >= n and lib.encrypt_update(s, b"p" * n, None) == need
        out += lib.encrypt_update(s, b"p" * n, need)
    assert lib.encrypt_final(s, None) == 16
    out += lib.encrypt_final(s, 16)
    assert len(out) == 112
    lib.decrypt_init(s, cbc, k)
    assert lib.decrypt(s, out, None) == 100 and lib.decrypt(s, out, 99) == 100
    assert lib.decrypt(s, out, 100) == b"p" * 100


def test_single_part_length_answer_refuses_multi_part(user):
    lib, s = user
    k = aes_key(lib, s)
    lib.encrypt_init(s, GCM, k)
    assert lib.encrypt(s, b"abc", None) == 19
    assert rv(lib.encrypt_update, s, b"abc", 100) == C.CKR_OPERATION_ACTIVE    # refused, not ended
    assert len(lib.encrypt(s, b"abc", 19)) == 19
    lib.encrypt_init(s, GCM, k)
    assert lib.encrypt(s, b"abc", 4) == 19
    assert rv(lib.encrypt_final, s, 100) == C.CKR_OPERATION_ACTIVE              # a Final always ends it
    assert rv(lib.encrypt, s, b"abc", 19) == C.CKR_OPERATION_NOT_INITIALIZED


@pytest.mark.parametrize("kind", ["encrypt", "decrypt", "digest", "sign", "verify"])
def test_bad_arguments_end_the_operation(user, kind):
    lib, s = user
    k = aes_key(lib, s, SIGN=True, VERIFY=True)
    mech = {"sign": Mechanism(C.CKM_AES_CMAC), "verify": Mechanism(C.CKM_AES_CMAC)}.get(kind, GCM)
    if kind == "digest":
        lib.digest_init(s, Mechanism(C.CKM_SHA256))
    else:
        getattr(lib, kind + "_init")(s, mech, k)
    assert rv(lib.refuse, s, kind, "NULL pointer") == C.CKR_ARGUMENTS_BAD
    assert rv(lib.refuse, s, kind, "NULL pointer") == C.CKR_OPERATION_NOT_INITIALIZED


def test_error_ends_operation(user):
    lib, s = user
    k = aes_key(lib, s)
    lib.decrypt_init(s, GCM, k)
    assert rv(lib.decrypt, s, b"\x00" * 40, 100) == C.CKR_ENCRYPTED_DATA_INVALID
    assert rv(lib.decrypt, s, b"\x00" * 40, 100) == C.CKR_OPERATION_NOT_INITIALIZED


def test_single_part_during_multi_part_is_refused(user):
    lib, s = user
    k = aes_key(lib, s)
    lib.encrypt_init(s, GCM, k)
    part = lib.encrypt_update(s, b"abc", 100)
    assert rv(lib.encrypt, s, b"def", 100) == C.CKR_OPERATION_ACTIVE
    part += lib.encrypt_update(s, b"def", 100)
    part += lib.encrypt_final(s, 100)
    lib.decrypt_init(s, GCM, k)
    assert lib.decrypt(s, part, 100) == b"abcdef"


def test_init_errors(user):
    lib, s = user
    k = aes_key(lib, s, ENCRYPT=False)
    assert rv(lib.encrypt_init, s, GCM, k) == C.CKR_KEY_FUNCTION_NOT_PERMITTED
    assert rv(lib.encrypt_init, s, GCM, 0xDEAD) == C.CKR_KEY_HANDLE_INVALID
    bad = Mechanism(C.CKM_AES_GCM, GcmParams(b"\x01" * 12, 96, b"", 64))
    assert rv(lib.decrypt_init, s, bad, k) == C.CKR_MECHANISM_PARAM_INVALID
    assert rv(lib.decrypt_init, s, Mechanism(0x7FFFFFF0), k) == C.CKR_MECHANISM_INVALID
    pub, priv = ec_pair(lib, s)
    assert rv(lib.decrypt_init, s, GCM, priv) in (C.CKR_KEY_TYPE_INCONSISTENT, C.CKR_MECHANISM_INVALID)
    lib.decrypt_init(s, GCM, k)
    assert rv(lib.decrypt_init, s, GCM, k) == C.CKR_OPERATION_ACTIVE
    only = aes_key(lib, s, ALLOWED_MECHANISMS=(C.CKM_AES_CBC_PAD,))
    assert rv(lib.encrypt_init, s, GCM, only) == C.CKR_MECHANISM_INVALID


def test_ecdsa_sign_verify_and_signature_checked(user):
    lib, s = user
    pub, priv = ec_pair(lib, s)
    mech = Mechanism(C.CKM_ECDSA_SHA256)
    lib.sign_init(s, mech, priv)
    sig = lib.sign(s, b"message", 200)
    assert len(sig) == 64
    point, = lib.get_attribute_value(s, pub, [C.CKA_EC_POINT])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[2:])
    key.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
               b"message", ec.ECDSA(hashes.SHA256()))
    lib.verify_init(s, mech, pub)
    lib.verify(s, b"message", sig)
    lib.verify_init(s, mech, pub)
    assert rv(lib.verify, s, b"massage", sig) == C.CKR_SIGNATURE_INVALID
    # multi-part verify of a single-part mechanism is buffered (pkcs11-tool relies on it)
    lib.verify_init(s, Mechanism(C.CKM_ECDSA), pub)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"message")
    lib.verify_update(s, digest.finalize())
    lib.verify_final(s, sig)


def test_rsa_sign_and_oaep(user):
    lib, s = user
    pub, priv = lib.generate_key_pair(s, Mechanism(C.CKM_RSA_PKCS_KEY_PAIR_GEN),
                                      T(MODULUS_BITS=2048, PUBLIC_EXPONENT=b"\x01\x00\x01"), T())
    lib.sign_init(s, Mechanism(C.CKM_SHA256_RSA_PKCS), priv)
    lib.sign_update(s, b"part one ")
    lib.sign_update(s, b"part two")
    sig = lib.sign_final(s, 512)
    spki, = lib.get_attribute_value(s, pub, [C.CKA_PUBLIC_KEY_INFO])
    serialization.load_der_public_key(spki).verify(sig, b"part one part two", padding.PKCS1v15(), hashes.SHA256())


def test_wrap_unwrap_and_extractable(user):
    lib, s = user
    wrapper = aes_key(lib, s, LABEL=b"wrapper", WRAP=True)     # a key-encryption key (key separation)
    secret = aes_key(lib, s, LABEL=b"wrapped", EXTRACTABLE=True)
    stuck = aes_key(lib, s, LABEL=b"stuck")
    mech = Mechanism(C.CKM_AES_KEY_WRAP)
    blob = lib.wrap_key(s, mech, wrapper, secret, 100)
    assert len(blob) == 40
    assert rv(lib.wrap_key, s, mech, wrapper, stuck, 100) == C.CKR_KEY_UNEXTRACTABLE
    assert rv(lib.wrap_key, s, mech, 0xBAD, secret, 100) == C.CKR_WRAPPING_KEY_HANDLE_INVALID
    back = lib.unwrap_key(s, mech, wrapper, blob, T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, LABEL=b"back"))
    local, vlen = lib.get_attribute_value(s, back, [C.CKA_LOCAL, C.CKA_VALUE_LEN])
    assert local == b"\x00" and ulong(vlen) == 32
    # the unwrapped key encrypts like the original
    lib.encrypt_init(s, GCM, secret)
    a = lib.encrypt(s, b"same", 100)
    lib.encrypt_init(s, GCM, back)
    assert lib.encrypt(s, b"same", 100) == a
    assert rv(lib.unwrap_key, s, mech, wrapper, b"\x00" * 40,
              T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES)) == C.CKR_WRAPPED_KEY_INVALID


def test_wrap_private_key_round_trip(user):
    lib, s = user
    wrapper = aes_key(lib, s, WRAP=True)
    pub, priv = ec_pair(lib, s, EXTRACTABLE=True)
    mech = Mechanism(C.CKM_AES_KEY_WRAP_PAD)
    blob = lib.wrap_key(s, mech, wrapper, priv, 1000)
    back = lib.unwrap_key(s, mech, wrapper, blob, T(CLASS=C.CKO_PRIVATE_KEY, KEY_TYPE=C.CKK_EC))
    lib.sign_init(s, Mechanism(C.CKM_ECDSA_SHA256), back)
    sig = lib.sign(s, b"m", 100)
    lib.verify_init(s, Mechanism(C.CKM_ECDSA_SHA256), pub)
    lib.verify(s, b"m", sig)


def test_ecdh_derive_agrees(user):
    lib, s = user
    pub_a, priv_a = ec_pair(lib, s, DERIVE=True)
    pub_b, priv_b = ec_pair(lib, s, DERIVE=True)
    point_a, = lib.get_attribute_value(s, pub_a, [C.CKA_EC_POINT])
    point_b, = lib.get_attribute_value(s, pub_b, [C.CKA_EC_POINT])
    tmpl = T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_GENERIC_SECRET, VALUE_LEN=32, SENSITIVE=False, EXTRACTABLE=True)
    ka = lib.derive_key(s, Mechanism(C.CKM_ECDH1_DERIVE, Ecdh1DeriveParams(C.CKD_NULL, b"", point_b)), priv_a, tmpl)
    kb = lib.derive_key(s, Mechanism(C.CKM_ECDH1_DERIVE, Ecdh1DeriveParams(C.CKD_NULL, b"", point_a)), priv_b, tmpl)
    va, = lib.get_attribute_value(s, ka, [C.CKA_VALUE])
    vb, = lib.get_attribute_value(s, kb, [C.CKA_VALUE])
    assert va == vb and len(va) == 32
    assert rv(lib.derive_key, s, Mechanism(C.CKM_ECDH1_DERIVE, Ecdh1DeriveParams(C.CKD_NULL, b"", point_b)),
              pub_a, tmpl) == C.CKR_KEY_FUNCTION_NOT_PERMITTED


def test_digest_and_digest_key(user):
    lib, s = user
    lib.digest_init(s, Mechanism(C.CKM_SHA256))
    lib.digest_update(s, b"ab")
    lib.digest_update(s, b"c")
    assert lib.digest_final(s, 32).hex().startswith("ba7816bf")
    k = lib.create_object(s, T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_GENERIC_SECRET, VALUE=b"abc"))
    lib.digest_init(s, Mechanism(C.CKM_SHA256))
    lib.digest_key(s, k)
    assert lib.digest_final(s, 32).hex().startswith("ba7816bf")


def test_always_authenticate_needs_context_login(user):
    lib, s = user
    pub, priv = ec_pair(lib, s, ALWAYS_AUTHENTICATE=True)
    lib.sign_init(s, Mechanism(C.CKM_ECDSA_SHA256), priv)
    assert rv(lib.sign, s, b"m", 100) == C.CKR_USER_NOT_LOGGED_IN
    lib.sign_init(s, Mechanism(C.CKM_ECDSA_SHA256), priv)
    assert rv(lib.login, s, C.CKU_CONTEXT_SPECIFIC, b"wrong-pin") == C.CKR_PIN_INCORRECT
    lib.login(s, C.CKU_CONTEXT_SPECIFIC, USER_PIN)
    assert len(lib.sign(s, b"m", 100)) == 64


def test_key_usable_only_by_visible_sessions(shared):
    lib, slot = shared
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    k = aes_key(lib, s, TOKEN=True)
    lib.logout(s)
    assert rv(lib.encrypt_init, s, GCM, k) == C.CKR_KEY_HANDLE_INVALID
    lib.close_all_sessions(slot)


def test_bad_arguments_after_session_and_operation(user):
    lib, s = user
    assert rv(lib.refuse, 0xBAD, "encrypt", "NULL pointer") == C.CKR_SESSION_HANDLE_INVALID
    assert rv(lib.refuse, s, "encrypt", "NULL pointer") == C.CKR_OPERATION_NOT_INITIALIZED


class Unreadable(Deferred):
    """A caller's buffer stated larger than it is: reading it would crash a C host."""

    def __init__(self, size):
        self.size = size

    def read(self):
        raise AssertionError("the input was read before its length was checked")


@pytest.mark.parametrize("mech, op, code", [
    (Mechanism(C.CKM_AES_ECB), "encrypt", C.CKR_DATA_LEN_RANGE),
    (Mechanism(C.CKM_AES_CBC, b"\x00" * 16), "decrypt", C.CKR_ENCRYPTED_DATA_LEN_RANGE),
    (GCM, "encrypt", C.CKR_DATA_LEN_RANGE),
    (GCM, "decrypt", C.CKR_ENCRYPTED_DATA_LEN_RANGE),
    (Mechanism(C.CKM_AES_KEY_WRAP), "encrypt", C.CKR_DATA_LEN_RANGE),
])
def test_stated_length_checked_before_the_input_is_read(user, mech, op, code):
    lib, s = user
    k = aes_key(lib, s)
    getattr(lib, op + "_init")(s, mech, k)
    assert rv(getattr(lib, op), s, Unreadable((1 << 40) + 1), 64) == code
    assert rv(getattr(lib, op), s, b"", 64) == C.CKR_OPERATION_NOT_INITIALIZED     # the error ended it
