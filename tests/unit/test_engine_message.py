"""Message-based AES-GCM (PKCS#11 3.0) in the engine, the IV counter that never
repeats for a key, operations ended when their key goes, and what the engine
hands to the native fast path."""

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms.params import GcmMessageParams, GcmParams, Mechanism

from .conftest import RW, USER_PIN, init_token, make_library
from .tmpl import T

KEY = bytes(range(32))
GCM = Mechanism(C.CKM_AES_GCM)
FIXED = b"FIXD"


def rv(fn, *args):
    with pytest.raises(PKCS11Error) as info:
        fn(*args)
    return info.value.rv


def key(lib, s, token=False, **extra):
    attrs = dict(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=KEY, TOKEN=token, ENCRYPT=True, DECRYPT=True)
    return lib.create_object(s, T(**{**attrs, **extra}))


def mp(iv=bytes(12), fixed=0, gen=C.CKG_NO_GENERATE, tag_bits=128, tag=b""):
    return GcmMessageParams(iv, fixed, gen, tag_bits, tag)


def test_message_round_trip_matches_gcm(user):
    lib, s = user
    k = key(lib, s)
    lib.message_encrypt_init(s, GCM, k)
    assert rv(lib.message_encrypt_init, s, GCM, k) == C.CKR_OPERATION_ACTIVE
    iv, ct, tag = lib.encrypt_message(s, mp(b"\x07" * 12), b"aad", b"hello", 100)
    assert iv == b"\x07" * 12 and ct + tag == AESGCM(KEY).encrypt(iv, b"hello", b"aad")
    lib.message_decrypt_init(s, GCM, k)
    assert lib.decrypt_message(s, mp(iv, tag=tag), b"aad", ct, 100) == b"hello"
    assert rv(lib.decrypt_message, s, mp(iv, tag=bytes(16)), b"aad", ct, 100) == C.CKR_ENCRYPTED_DATA_INVALID
    assert lib.decrypt_message(s, mp(iv, tag=tag), b"aad", ct, 100) == b"hello"   # still active
    lib.message_encrypt_final(s)
    assert rv(lib.encrypt_message, s, mp(), b"", b"x", 10) == C.CKR_OPERATION_NOT_INITIALIZED


def test_length_query_generates_nothing(user):
    lib, s = user
    lib.message_encrypt_init(s, GCM, key(lib, s))
    p = mp(FIXED + bytes(8), 32, C.CKG_GENERATE_COUNTER)
    assert lib.encrypt_message(s, p, b"", b"hello", None) == 5
    assert lib.encrypt_message(s, p, b"", b"hello", 4) == 5
    first = lib.encrypt_message(s, p, b"", b"hello", 5)[0]
    second = lib.encrypt_message(s, p, b"", b"hello", 5)[0]
    assert first[:4] == second[:4] == FIXED
    assert int.from_bytes(second[4:], "big") == int.from_bytes(first[4:], "big") + 1


def _counter_ivs(lib, s, k, n):
    lib.message_encrypt_init(s, GCM, k)
    ivs = [lib.encrypt_message(s, mp(FIXED + bytes(8), 32, C.CKG_GENERATE), b"", b"x", 1)[0] for _ in range(n)]
    lib.message_encrypt_final(s)
    return ivs


def _find(lib, s, label):
    lib.find_objects_init(s, T(LABEL=label))
    found = lib.find_objects(s, 2)
    lib.find_objects_final(s)
    assert len(found) == 1
    return found[0]


def test_counter_never_repeats_across_libraries_and_copies(tmp_path):
    """The counter belongs to the key object and its copies (store.reserve_counter),
    kept in the store: another library (process) on the same token continues it."""
    lib = make_library(tmp_path)
    slot = init_token(lib)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    k = key(lib, s, token=True, LABEL=b"ctr")
    seen = _counter_ivs(lib, s, k, 3)
    seen += _counter_ivs(lib, s, lib.copy_object(s, k, T(LABEL=b"ctr copy")), 2)           # a token copy
    seen += _counter_ivs(lib, s, lib.copy_object(s, k, T(TOKEN=False, LABEL=b"s")), 1)     # a session copy
    lib.finalize()
    again = make_library(tmp_path)          # another process, or the same one later
    s = again.open_session(slot, RW)
    again.login(s, C.CKU_USER, USER_PIN)
    seen += _counter_ivs(again, s, _find(again, s, b"ctr"), 1)
    seen += _counter_ivs(again, s, _find(again, s, b"ctr copy"), 1)
    assert len(set(seen)) == len(seen) == 8
    again.finalize()


@pytest.mark.parametrize("p, why", [
    (mp(bytes(12), 96, C.CKG_GENERATE_COUNTER), "no room for a counter"),
    (mp(bytes(12), 4, C.CKG_GENERATE_COUNTER), "fixed bits not whole bytes"),
    (mp(bytes(12), 8, C.CKG_GENERATE_RANDOM), "random part under 12 bytes"),
    (mp(bytes(12), 0, 7), "unknown generator"),
    (mp(bytes(4)), "IV too short"),
    (mp(tag_bits=64), "tag too short"),
    (GcmParams(bytes(12), 96, b"", 128), "not message parameters"),
])
def test_bad_message_parameters_keep_the_operation(user, p, why):
    lib, s = user
    lib.message_encrypt_init(s, GCM, key(lib, s))
    assert rv(lib.encrypt_message, s, p, b"", b"x", 10) == C.CKR_MECHANISM_PARAM_INVALID, why
    assert len(lib.encrypt_message(s, mp(), b"", b"x", 10)[1]) == 1


def test_random_iv_keeps_the_fixed_part(user):
    lib, s = user
    lib.message_encrypt_init(s, GCM, key(lib, s))
    ivs = {lib.encrypt_message(s, mp(FIXED + bytes(12), 32, C.CKG_GENERATE_RANDOM), b"", b"x", 1)[0]
           for _ in range(4)}
    assert len(ivs) == 4 and all(iv[:4] == FIXED and len(iv) == 16 for iv in ivs)


def test_begin_next_equals_one_shot(user):
    lib, s = user
    k = key(lib, s)
    lib.message_encrypt_init(s, GCM, k)
    _, ct, tag = lib.encrypt_message(s, mp(), b"aad", b"0123456789", 10)
    assert lib.encrypt_message_begin(s, mp(), b"aad") == bytes(12)
    assert rv(lib.encrypt_message, s, mp(), b"", b"x", 10) == C.CKR_OPERATION_ACTIVE
    assert lib.encrypt_message_next(s, mp(), b"0123", None, False) == 4
    first, none = lib.encrypt_message_next(s, mp(), b"0123", 4, False)
    last, last_tag = lib.encrypt_message_next(s, mp(), b"456789", 6, True)
    assert (first + last, none, last_tag) == (ct, None, tag)
    lib.message_decrypt_init(s, GCM, k)
    lib.decrypt_message_begin(s, mp(), b"aad")
    assert lib.decrypt_message_next(s, mp(tag=tag), ct[:3], None, False) == 3      # a query takes nothing
    assert lib.decrypt_message_next(s, mp(tag=tag), ct[:3], 3, False) == (b"", None)
    assert lib.decrypt_message_next(s, mp(tag=tag), ct[3:], 2, True) == 10        # too small: kept
    assert lib.decrypt_message_next(s, mp(tag=tag), ct[3:], 10, True) == (b"0123456789", None)
    lib.decrypt_message_begin(s, mp(), b"other aad")
    assert rv(lib.decrypt_message_next, s, mp(tag=tag), ct, 10, True) == C.CKR_ENCRYPTED_DATA_INVALID
    assert rv(lib.decrypt_message_next, s, mp(tag=tag), ct, 10, True) == C.CKR_OPERATION_NOT_INITIALIZED


def test_message_init_checks_the_key(user):
    lib, s = user
    k = key(lib, s, ENCRYPT=False)
    assert rv(lib.message_encrypt_init, s, GCM, k) == C.CKR_KEY_FUNCTION_NOT_PERMITTED
    assert rv(lib.message_encrypt_init, s, Mechanism(C.CKM_AES_CBC), key(lib, s)) == C.CKR_MECHANISM_INVALID
    assert lib.get_mechanism_info(lib._session(s).token.slot_id, C.CKM_AES_GCM)[2] & C.CKF_MESSAGE_ENCRYPT


def test_destroyed_or_changed_key_ends_operations(user):
    lib, s = user
    k = key(lib, s)
    lib.encrypt_init(s, Mechanism(C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128)), k)
    lib.message_decrypt_init(s, GCM, k)
    lib.set_attribute_value(s, k, T(LABEL=b"renamed"))
    assert rv(lib.encrypt, s, b"x", 100) == C.CKR_KEY_HANDLE_INVALID
    assert rv(lib.encrypt, s, b"x", 100) == C.CKR_OPERATION_NOT_INITIALIZED
    assert rv(lib.message_decrypt_final, s) == C.CKR_KEY_HANDLE_INVALID
    lib.message_encrypt_init(s, GCM, k)
    lib.destroy_object(s, k)
    assert rv(lib.encrypt_message, s, mp(), b"", b"x", 1) == C.CKR_KEY_HANDLE_INVALID


def test_offload_grant_and_release(user):
    lib, s = user
    k = key(lib, s, token=True)
    lib.encrypt_init(s, Mechanism(C.CKM_AES_GCM, GcmParams(b"\x01" * 12, 96, b"aad", 96)), k)
    assert lib.offload_grant(s, "encrypt") == (k, KEY, b"\x01" * 12, b"aad", 12)
    lib.release(s, "encrypt")
    assert rv(lib.encrypt, s, b"x", 10) == C.CKR_OPERATION_NOT_INITIALIZED
    lib.encrypt_init(s, Mechanism(C.CKM_AES_CBC, bytes(16)), k)
    assert lib.offload_grant(s, "encrypt") is None
    lib.message_decrypt_init(s, GCM, k)
    assert lib.offload_grant(s, "message_decrypt") == (k, KEY, b"", b"", 0)
    p256 = bytes.fromhex("06082a8648ce3d030107")
    _, priv = lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN), T(EC_PARAMS=p256), T(SIGN=True))
    lib.sign_init(s, Mechanism(C.CKM_ECDSA), priv)
    handle, value, params = lib.offload_grant(s, "sign")
    assert (handle, len(value), params) == (priv, 32, p256)
    lib.release(s, "sign")
    lib.sign_init(s, Mechanism(C.CKM_ECDSA_SHA256), priv)        # only raw ECDSA goes native
    assert lib.offload_grant(s, "sign") is None
    lib.release(s, "sign")
    _, always = lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN), T(EC_PARAMS=p256),
                                      T(SIGN=True, ALWAYS_AUTHENTICATE=True))
    lib.sign_init(s, Mechanism(C.CKM_ECDSA), always)              # waits for a context-specific login
    assert lib.offload_grant(s, "sign") is None


def test_offload_is_told_what_to_drop(user):
    lib, s = user
    calls = []

    class Spy:
        def drop_session(self, h): calls.append(("session", h))
        def drop_key(self, h, code): calls.append(("key", h, code))
        def drop_all(self): calls.append(("all",))
    lib.offload = Spy()
    k = key(lib, s)
    lib.set_attribute_value(s, k, T(LABEL=b"x"))
    lib.find_objects_init(s, [])            # a refresh replaying our own write is no change
    lib.find_objects_final(s)
    lib.destroy_object(s, k)
    other = lib.open_session(lib._session(s).token.slot_id, RW)
    lib.close_session(other)
    assert calls == [("key", k, C.CKR_KEY_HANDLE_INVALID)] * 2 + [("session", other)]


def test_pin_lock_ends_the_tokens_operations(tmp_path):
    """A PIN that locks stops key use: operations end, the offload drops the sessions."""
    from provider.config import Config
    from provider.library import Library
    conf = f'[tokens]\ndirectory = "{tmp_path / "tokens"}"\n[log]\nlevel = "ERROR"\n[pin]\nmax_failures = 2\n'
    lib = Library(Config.parse(conf, "test"))
    slot = init_token(lib)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    dropped = []

    class Spy:
        def drop_session(self, h): dropped.append(h)
        def drop_key(self, h, code): pass
        def drop_all(self): pass
    lib.offload = Spy()
    p256 = bytes.fromhex("06082a8648ce3d030107")
    _, priv = lib.generate_key_pair(s, Mechanism(C.CKM_EC_KEY_PAIR_GEN), T(EC_PARAMS=p256),
                                    T(SIGN=True, ALWAYS_AUTHENTICATE=True))
    lib.encrypt_init(s, Mechanism(C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128)), key(lib, s))
    lib.sign_init(s, Mechanism(C.CKM_ECDSA), priv)
    assert rv(lib.login, s, C.CKU_CONTEXT_SPECIFIC, b"wrong-pin") == C.CKR_PIN_INCORRECT
    assert lib.encrypt(s, b"x", None)                    # one wrong PIN: still running
    assert rv(lib.login, s, C.CKU_CONTEXT_SPECIFIC, b"wrong-pin") == C.CKR_PIN_INCORRECT   # now locked
    assert rv(lib.encrypt, s, b"x", 100) == C.CKR_OPERATION_NOT_INITIALIZED
    assert dropped == [s]
    lib.finalize()


@pytest.mark.parametrize("change", ["destroy", "unencrypt"])
def test_recheck_sees_another_librarys_change(tmp_path, change):
    """The native lease's engine side: two libraries on one token directory (two processes).
    `recheck` takes in the other's write at the store's head: the key's native state is
    dropped, and a destroyed key is refused; the next init sees it too."""
    lib = make_library(tmp_path)
    slot = init_token(lib)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    dropped = []

    class Spy:
        def drop_session(self, h): pass
        def drop_key(self, h, code): dropped.append((h, code))
        def drop_all(self): pass
    lib.offload = Spy()
    k = key(lib, s, token=True, LABEL=b"shared")
    lib.recheck(s, k)                                    # nothing changed: renewed
    other = make_library(tmp_path)
    s2 = other.open_session(slot, RW)
    other.login(s2, C.CKU_USER, USER_PIN)
    other.find_objects_init(s2, T(LABEL=b"shared"))
    (k2,) = other.find_objects(s2, 2)
    other.find_objects_final(s2)
    if change == "destroy":
        other.destroy_object(s2, k2)
    else:
        other.set_attribute_value(s2, k2, T(ENCRYPT=False))
    other.finalize()
    assert not dropped                                   # not seen until the head is checked
    if change == "destroy":
        assert rv(lib.recheck, s, k) == C.CKR_KEY_HANDLE_INVALID
    else:
        lib.recheck(s, k)                                # still there; its native state went
    assert dropped == [(k, C.CKR_KEY_HANDLE_INVALID)]
    want = C.CKR_KEY_HANDLE_INVALID if change == "destroy" else C.CKR_KEY_FUNCTION_NOT_PERMITTED
    assert rv(lib.message_encrypt_init, s, GCM, k) == want
    assert rv(lib.recheck, 999, k) == C.CKR_SESSION_HANDLE_INVALID
    lib.finalize()
