"""pytest-benchmark timings of the engine's own hot paths, in-process (no C ABI),
to catch regressions. Not part of the test suite (tests/); run them with

    .venv/bin/python -m pytest -p no:cacheprovider benchmarks/ --benchmark-only

Each test runs against a real token (SQLite store, real PIN KDF) with 1,000 data
objects and one key of each kind."""

import pytest

from provider import constants as C
from provider.config import Config
from provider.library import Library
from provider.mechanisms.params import GcmMessageParams, GcmParams, Mechanism

SO_PIN, USER_PIN = b"so-secret-1", b"user-1234"
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
P256 = bytes.fromhex("06082a8648ce3d030107")
OBJECTS = 1000


def _t(**attrs):
    from provider import attrtypes
    return [(getattr(C, "CKA_" + k), attrtypes.encode(getattr(C, "CKA_" + k), v)) for k, v in attrs.items()]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    lib = Library(Config.parse(f'[tokens]\ndirectory = "{root / "tokens"}"\n[log]\nlevel = "ERROR"\n', "bench"))
    slot = lib.free_slot
    lib.init_token(slot, SO_PIN, b"bench".ljust(32))
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_SO, SO_PIN)
    lib.init_pin(s, USER_PIN)
    lib.logout(s)
    lib.login(s, C.CKU_USER, USER_PIN)
    for i in range(OBJECTS):
        lib.create_object(s, _t(CLASS=C.CKO_DATA, TOKEN=True, PRIVATE=False, LABEL=f"obj-{i}".encode(),
                                VALUE=b"v" * 32))
    keys = {
        "aes": lib.generate_key(s, Mechanism(C.CKM_AES_KEY_GEN), _t(VALUE_LEN=32, TOKEN=True, ENCRYPT=True)),
        "ec": lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN), _t(EC_PARAMS=P256, TOKEN=True),
                                    _t(TOKEN=True, SIGN=True))[1],
        "rsa": lib.generate_key_pair(s, Mechanism(C.CKM_RSA_PKCS_KEY_PAIR_GEN),
                                     _t(MODULUS_BITS=2048, PUBLIC_EXPONENT=b"\x01\x00\x01", TOKEN=True),
                                     _t(TOKEN=True, SIGN=True))[1],
    }
    yield lib, s, keys
    lib.finalize()


def test_get_attribute_value(benchmark, engine):
    lib, s, keys = engine
    types = [C.CKA_CLASS, C.CKA_KEY_TYPE, C.CKA_LABEL, C.CKA_VALUE_LEN, C.CKA_VALUE]
    out = benchmark(lib.get_attribute_value, s, keys["aes"], types)
    assert out[-1] == C.CKR_ATTRIBUTE_SENSITIVE


def test_find_by_label(benchmark, engine):
    lib, s, _ = engine
    template = _t(LABEL=b"obj-777")

    def find():
        lib.find_objects_init(s, template)
        found = lib.find_objects(s, 2)
        lib.find_objects_final(s)
        return found
    assert len(benchmark(find)) == 1


@pytest.mark.parametrize("kind, mech", [("ec", C.CKM_ECDSA), ("rsa", C.CKM_SHA256_RSA_PKCS)])
def test_sign(benchmark, engine, kind, mech):
    lib, s, keys = engine

    def sign():
        lib.sign_init(s, Mechanism(mech), keys[kind])
        return lib.sign(s, b"m" * 32, 1024)
    assert benchmark(sign)


def test_gcm_encrypt_python_path(benchmark, engine):
    lib, s, keys = engine
    mech = Mechanism(C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128))

    def encrypt():
        lib.encrypt_init(s, mech, keys["aes"])
        return lib.encrypt(s, b"x" * 64, 100)
    assert len(benchmark(encrypt)) == 80


def test_encrypt_message_python_path(benchmark, engine):
    lib, s, keys = engine
    lib.message_encrypt_init(s, Mechanism(C.CKM_AES_GCM), keys["aes"])
    params = GcmMessageParams(bytes(12), 32, C.CKG_GENERATE_COUNTER, 128)
    assert len(benchmark(lib.encrypt_message, s, params, b"", b"x" * 64, 64)[1]) == 64
    lib.message_encrypt_final(s)
