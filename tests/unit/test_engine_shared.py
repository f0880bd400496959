"""Two Libraries on one token behave like two processes (each has its own store
connection): no resurrection, no lost update, and a key destroyed or restricted in
one fails its next use in the other; on each store kind. The same through the built
module and real processes: tests/e2e/test_two_processes.py."""

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.mechanisms.params import GcmParams, Mechanism

from .conftest import RW, USER_PIN, init_token, make_library
from .tmpl import T

GCM = Mechanism(C.CKM_AES_GCM, GcmParams(bytes(12), 96, b"", 128))


def rv(fn, *args):
    try:
        fn(*args)
    except PKCS11Error as err:
        return err.rv
    return C.CKR_OK


def store_table(kind: str, request) -> str:
    if kind == "postgres":
        return f'[store]\nkind = "postgres"\ndsn = "{request.getfixturevalue("postgres").database()}"\n'
    return f'[store]\nkind = "{kind}"\n'


@pytest.fixture(params=["sqlite", "filesystem", "postgres"])
def pair(tmp_path, request):
    store = store_table(request.param, request)
    a = make_library(tmp_path, store)
    slot = init_token(a)
    b = make_library(tmp_path, store)
    sessions = []
    for lib in (a, b):
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_USER, USER_PIN)
        sessions.append(s)
    yield (a, sessions[0]), (b, sessions[1])
    a.finalize()
    b.finalize()


def find(lib, s, label):
    lib.find_objects_init(s, T(LABEL=label))
    found = lib.find_objects(s, 10)
    lib.find_objects_final(s)
    return found


def key(lib, s, label=b"K"):
    return lib.create_object(s, T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=bytes(32), TOKEN=True,
                                  PRIVATE=True, ENCRYPT=True, DECRYPT=True, LABEL=label))


def label_of(lib, s, h):
    return lib.get_attribute_value(s, h, [C.CKA_LABEL])[0]


def test_set_attribute_after_destroy_elsewhere_does_not_resurrect(pair):
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    assert label_of(a, sa, ka) == b"K"          # A has read K
    b.destroy_object(sb, kb)
    assert rv(a.set_attribute_value, sa, ka, T(LABEL=b"zombie")) == C.CKR_OBJECT_HANDLE_INVALID
    assert rv(a.copy_object, sa, ka, T()) == C.CKR_OBJECT_HANDLE_INVALID
    assert find(a, sa, b"zombie") == find(b, sb, b"zombie") == find(b, sb, b"K") == []


def test_no_lost_update(pair):
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    b.set_attribute_value(sb, kb, T(ENCRYPT=False))
    a.set_attribute_value(sa, ka, T(LABEL=b"renamed"))      # applied on top of B's change
    for lib, s, h in ((a, sa, ka), (b, sb, kb)):
        assert lib.get_attribute_value(s, h, [C.CKA_LABEL, C.CKA_ENCRYPT]) == [b"renamed", b"\x00"]


def test_stale_conflicting_write_is_refused(pair):
    """A's change is decided again on B's newer version: what B forbade is refused."""
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    assert label_of(a, sa, ka) == b"K"
    b.set_attribute_value(sb, kb, T(DESTROYABLE=False))
    assert rv(a.destroy_object, sa, ka) == C.CKR_ACTION_PROHIBITED
    b.set_attribute_value(sb, kb, T(SENSITIVE=True))
    assert rv(a.set_attribute_value, sa, ka, T(SENSITIVE=False)) == C.CKR_ATTRIBUTE_READ_ONLY
    assert find(b, sb, b"K") == [kb]


@pytest.mark.parametrize("change", ["destroy", "restrict"])
def test_next_init_fails_after_change_elsewhere(pair, change):
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    a.encrypt_init(sa, GCM, ka)
    assert len(a.encrypt(sa, b"data", 100)) == 4 + 16
    if change == "destroy":
        b.destroy_object(sb, kb)
        expected = C.CKR_KEY_HANDLE_INVALID
    else:
        b.set_attribute_value(sb, kb, T(ENCRYPT=False))
        expected = C.CKR_KEY_FUNCTION_NOT_PERMITTED
    assert rv(a.encrypt_init, sa, GCM, ka) == expected
    assert rv(a.message_encrypt_init, sa, Mechanism(C.CKM_AES_GCM), ka) == expected


def test_operation_in_progress_ends_when_key_goes_elsewhere(pair):
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    a.encrypt_init(sa, Mechanism(C.CKM_AES_CBC_PAD, bytes(16)), ka)
    a.encrypt_update(sa, b"x" * 16, 100)
    b.destroy_object(sb, kb)
    a.get_slot_list(True)                 # any key use or object call refreshes; an init does:
    assert rv(a.decrypt_init, sa, Mechanism(C.CKM_AES_CBC_PAD, bytes(16)), ka) == C.CKR_KEY_HANDLE_INVALID
    assert rv(a.encrypt_update, sa, b"x" * 16, 100) == C.CKR_KEY_HANDLE_INVALID


def test_key_pair_is_one_commit(pair, monkeypatch):
    """The private key's write fails after the public key's: neither exists, anywhere."""
    (a, sa), (b, sb) = pair
    store = a.sessions[sa].token.store
    real, calls = store.save_object, []

    def second_fails(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "disk full")
        return real(*args, **kwargs)
    monkeypatch.setattr(store, "save_object", second_fails)
    head = store.head()
    templates = (T(TOKEN=True, LABEL=b"pair", EC_PARAMS=bytes.fromhex("06082a8648ce3d030107")),
                 T(TOKEN=True, LABEL=b"pair", PRIVATE=True, SIGN=True))
    mech = Mechanism(C.CKM_EC_KEY_PAIR_GEN)
    assert rv(a.generate_key_pair, sa, mech, *templates) == C.CKR_DEVICE_ERROR
    assert store.head() == head and find(a, sa, b"pair") == find(b, sb, b"pair") == []
    monkeypatch.setattr(store, "save_object", real)
    a.generate_key_pair(sa, mech, *templates)
    assert store.head()[0] == head[0] + 2 and len(find(b, sb, b"pair")) == 2


def test_running_operation_stops_within_a_lease(pair, monkeypatch):
    """An operation on the Python path checks the store again once KEY_LEASE has passed."""
    from provider import session
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    monkeypatch.setattr(session, "KEY_LEASE", 3600.0)
    a.encrypt_init(sa, Mechanism(C.CKM_AES_CBC_PAD, bytes(16)), ka)
    a.encrypt_update(sa, b"x" * 16, 100)
    b.destroy_object(sb, kb)
    a.encrypt_update(sa, b"x" * 16, 100)                 # within the lease: not looked at yet
    monkeypatch.setattr(session, "KEY_LEASE", 0.0)       # the lease is over
    assert rv(a.encrypt_update, sa, b"x" * 16, 100) == C.CKR_KEY_HANDLE_INVALID
    assert rv(a.encrypt_update, sa, b"x" * 16, 100) == C.CKR_OPERATION_NOT_INITIALIZED


def test_a_writer_that_keeps_losing_gets_its_turn(pair, monkeypatch):
    """B writes K just before every one of A's writes that B can come in before: A's
    last try runs in a store transaction (nobody writes in between) and lands on B's
    latest version instead of failing with CKR_FUNCTION_FAILED."""
    (a, sa), (b, sb) = pair
    ka = key(a, sa)
    (kb,) = find(b, sb, b"K")
    token = a.sessions[sa].token
    real, tries = token.store.save_object, []

    def b_first(*args, **kwargs):
        tries.append(token.in_transaction)
        if not token.in_transaction:
            b.set_attribute_value(sb, kb, T(END_DATE=b"203001%02d" % len(tries)))
        return real(*args, **kwargs)
    monkeypatch.setattr(token.store, "save_object", b_first)
    a.set_attribute_value(sa, ka, T(LABEL=b"mine"))
    assert tries[-1] is True and tries.count(False) == len(tries) - 1
    last = b"203001%02d" % (len(tries) - 1)
    assert b.get_attribute_value(sb, kb, [C.CKA_LABEL, C.CKA_END_DATE]) == [b"mine", last]
