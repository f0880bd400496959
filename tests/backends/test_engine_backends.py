"""One engine-level suite, run against each backend: a token whose policy names only that
backend (fallback "none"), driven through the Library API as the PKCS#11 shim drives it.
Peers are real: SoftHSM2 in a tmp token dir, a second FerroHSM module (its own copy, token
directory and config) behind the generic pkcs11 backend, swtpm, pcscd + vpcd + jcecard.
What a backend refuses is asserted by name (REFUSED); only what a peer cannot do at all is
skipped, by name (SKIPS; the README's backend table lists them)."""

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from provider import constants as C
from provider.mechanisms.params import Ecdh1DeriveParams, Mechanism, OaepParams, PssParams

from .engine_env import (PIN, Env, backend_settings, init_token, rv, skip_unless,  # noqa: F401
                         write_config)

BACKENDS = ["soft", "softhsm", "pkcs11", "tpm2", "piv"]
PEER_OF = {"softhsm": "softhsm", "pkcs11": "ferro_remote", "tpm2": "swtpm", "piv": "pcsc"}
# what a backend refuses at *Init, by name: (backend, test) -> why
REFUSED = {("pkcs11", "pkcs1"): "FerroHSM (the remote) has no CKM_RSA_X_509, which the engine asks "
                                "for a PKCS#1 v1.5 decryption (it unpads itself)"}
SKIPS = {
    ("softhsm", "oaep-sha256"): "SoftHSM2 2.6 decrypts OAEP with SHA-1 only",
    ("tpm2", "ecdh"): "the TPM backend does no ECDH",
}
MSG = b"FerroHSM engine-level backend test"
KINDS = ("ec-p256", "ec-p384", "rsa-2048")


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory):
    name = request.param
    peers = {PEER_OF[name]: request.getfixturevalue(PEER_OF[name])} if name in PEER_OF else {}
    path = tmp_path_factory.mktemp(f"engine-{name}")
    from provider.library import Library
    lib = Library(write_config(path, {name: backend_settings(name, peers)}, ([name], "none"),
                               f"t-{name}"))
    slot = init_token(lib, f"t-{name}")
    s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
    lib.login(s, C.CKU_USER, PIN)
    yield Env(lib, slot, s, name)
    lib.finalize()


@pytest.fixture(scope="module")
def keys(env):
    return {kind: env.keypair(kind, label=f"k-{kind}", key_id=kind.encode()) for kind in KINDS}


def _pub(env, handle):
    return serialization.load_der_public_key(env.attr(handle, C.CKA_PUBLIC_KEY_INFO))


def _sign(env, mech, handle, data=MSG):
    env.lib.sign_init(env.session, mech, handle)
    return env.lib.sign(env.session, data, 1 << 16)


def _verify(env, mech, handle, sig, data=MSG):
    env.lib.verify_init(env.session, mech, handle)
    env.lib.verify(env.session, data, sig)


@pytest.mark.parametrize("kind", KINDS)
def test_keygen_attributes(env, keys, kind):
    pub, priv = keys[kind]
    assert env.attr(priv, C.CKA_SENSITIVE) == b"\x01" and env.attr(priv, C.CKA_LOCAL) == b"\x01"
    assert env.attr(priv, C.CKA_EXTRACTABLE) == b"\x00"
    assert env.attr(priv, C.CKA_NEVER_EXTRACTABLE) == b"\x01"
    secret = C.CKA_VALUE if kind.startswith("ec") else C.CKA_PRIVATE_EXPONENT
    assert env.attr(priv, secret) in (C.CKR_ATTRIBUTE_SENSITIVE, C.CKR_ATTRIBUTE_TYPE_INVALID)
    assert env.attr(priv, C.CKA_FERRO_KEY_REF) in (C.CKR_ATTRIBUTE_SENSITIVE,
                                                   C.CKR_ATTRIBUTE_TYPE_INVALID)
    held = env.attr(priv, C.CKA_FERRO_BACKEND)
    assert held == (C.CKR_ATTRIBUTE_TYPE_INVALID if env.name == "soft" else env.name.encode())
    assert env.attr(pub, C.CKA_PUBLIC_KEY_INFO) == env.attr(priv, C.CKA_PUBLIC_KEY_INFO)


@pytest.mark.parametrize("kind,mech", [("ec-p256", C.CKM_ECDSA_SHA256), ("ec-p384", C.CKM_ECDSA_SHA384),
                                       ("ec-p256", C.CKM_ECDSA)])
def test_ecdsa_sign_verify(env, keys, kind, mech):
    pub, priv = keys[kind]
    data = hashlib.sha256(MSG).digest() if mech == C.CKM_ECDSA else MSG
    sig = _sign(env, Mechanism(mech), priv, data)
    _verify(env, Mechanism(mech), pub, sig, data)
    n = len(sig) // 2
    der = utils.encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
    alg = {C.CKM_ECDSA_SHA384: hashes.SHA384()}.get(mech, hashes.SHA256())
    _pub(env, pub).verify(der, data if mech != C.CKM_ECDSA else MSG, ec.ECDSA(alg))


@pytest.mark.parametrize("mech", [Mechanism(C.CKM_SHA256_RSA_PKCS),
                                  Mechanism(C.CKM_SHA256_RSA_PKCS_PSS,
                                            PssParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, 32))])
def test_rsa_sign_verify(env, keys, mech):
    pub, priv = keys["rsa-2048"]
    sig = _sign(env, mech, priv)
    _verify(env, mech, pub, sig)
    assert rv(_verify, env, mech, pub, sig, MSG + b"!") == C.CKR_SIGNATURE_INVALID


@pytest.mark.parametrize("scheme", ["pkcs1", "oaep-sha256"])
def test_rsa_encrypt_decrypt(env, keys, scheme):
    skip_unless(env.name, SKIPS, scheme)
    pub, priv = keys["rsa-2048"]
    mech = Mechanism(C.CKM_RSA_PKCS) if scheme == "pkcs1" else Mechanism(
        C.CKM_RSA_PKCS_OAEP, OaepParams(C.CKM_SHA256, C.CKG_MGF1_SHA256, C.CKZ_DATA_SPECIFIED, b""))
    env.lib.encrypt_init(env.session, mech, pub)
    ct = env.lib.encrypt(env.session, b"32 bytes of session key material", 1 << 12)
    if (env.name, scheme) in REFUSED:
        assert rv(env.lib.decrypt_init, env.session, mech, priv) == C.CKR_MECHANISM_INVALID
        return
    env.lib.decrypt_init(env.session, mech, priv)
    assert env.lib.decrypt(env.session, ct, 1 << 12) == b"32 bytes of session key material"


def test_ecdh(env, keys):
    skip_unless(env.name, SKIPS, "ecdh")
    pub, priv = keys["ec-p256"]
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint)
    from .engine_env import T
    h = env.lib.derive_key(env.session, Mechanism(C.CKM_ECDH1_DERIVE,
                                                  Ecdh1DeriveParams(C.CKD_NULL, b"", point)), priv,
                           T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_GENERIC_SECRET, SENSITIVE=False,
                             EXTRACTABLE=True, TOKEN=False))
    assert env.attr(h, C.CKA_VALUE) == peer.exchange(ec.ECDH(), _pub(env, pub))


def test_find(env, keys):
    pub, priv = keys["ec-p384"]
    assert env.find(CLASS=C.CKO_PRIVATE_KEY, ID=b"ec-p384") == [priv]
    assert env.find(CLASS=C.CKO_PUBLIC_KEY, ID=b"ec-p384") == [pub]
    assert env.find(CLASS=C.CKO_PRIVATE_KEY, LABEL=b"k-rsa-2048") == [keys["rsa-2048"][1]]
    assert env.find(FERRO_KEY_REF=b"x") == []


def test_login_gates_key_use(env, keys):
    lib, s = env.lib, env.session
    priv = keys["ec-p256"][1]
    lib.logout(s)
    try:
        assert env.find(CLASS=C.CKO_PRIVATE_KEY) == []
        assert rv(lib.sign_init, s, Mechanism(C.CKM_ECDSA_SHA256), priv) == C.CKR_KEY_HANDLE_INVALID
    finally:
        lib.login(s, C.CKU_USER, PIN)
    priv = env.find(CLASS=C.CKO_PRIVATE_KEY, ID=b"ec-p256")[0]   # new handle after logout
    assert len(_sign(env, Mechanism(C.CKM_ECDSA_SHA256), priv)) == 64


def test_pin_lock(env, keys):
    lib = env.lib
    s = lib.open_session(env.slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)   # same token
    lib.logout(s)
    try:
        for _ in range(2):
            assert rv(lib.login, s, C.CKU_USER, b"wrong-pin") == C.CKR_PIN_INCORRECT
        assert lib.get_token_info(env.slot)["flags"] & C.CKF_USER_PIN_FINAL_TRY
        assert rv(lib.login, s, C.CKU_USER, b"wrong-pin") in (C.CKR_PIN_INCORRECT, C.CKR_PIN_LOCKED)
        assert lib.get_token_info(env.slot)["flags"] & C.CKF_USER_PIN_LOCKED
        assert rv(lib.login, s, C.CKU_USER, PIN) == C.CKR_PIN_LOCKED
    finally:
        so = lib.open_session(env.slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        lib.login(so, C.CKU_SO, b"so-12345678")
        lib.init_pin(so, PIN)                  # the SO unlocks it again
        lib.logout(so)
        lib.close_session(so)
        lib.login(env.session, C.CKU_USER, PIN)
        lib.close_session(s)


def test_destroy_and_unsupported_kind(env):
    pub, priv = env.keypair("ec-p256", label="doomed", key_id=b"doomed")
    env.lib.destroy_object(env.session, priv)
    env.lib.destroy_object(env.session, pub)
    assert env.find(ID=b"doomed") == []
    from .engine_env import P521, T
    made = rv(env.lib.generate_key_pair, env.session, Mechanism(C.CKM_EC_KEY_PAIR_GEN),
              T(TOKEN=True, EC_PARAMS=P521), T(TOKEN=True, PRIVATE=True, SIGN=True))
    assert made == (C.CKR_OK if env.name == "soft" else C.CKR_MECHANISM_INVALID)
    assert rv(lambda: env.keypair("ec-p256", "x", b"x", EXTRACTABLE=True)) == (
        C.CKR_OK if env.name in ("soft", "softhsm", "pkcs11") else C.CKR_TEMPLATE_INCONSISTENT)
