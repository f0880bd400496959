"""Slots, tokens, sessions, login and PINs through the engine API."""

import pytest

from provider import constants as C
from provider.errors import PKCS11Error

from .conftest import RO, RW, SO_PIN, USER_PIN, init_token, make_library


def rv(fn, *args):
    with pytest.raises(PKCS11Error) as info:
        fn(*args)
    return info.value.rv


def test_fresh_directory_has_one_free_slot(lib):
    slots = lib.get_slot_list(True)
    assert slots == [lib.free_slot]
    info = lib.get_token_info(lib.free_slot)
    assert not info["flags"] & C.CKF_TOKEN_INITIALIZED
    assert rv(lib.open_session, lib.free_slot, RW) == C.CKR_TOKEN_NOT_RECOGNIZED


def test_init_token_makes_a_new_free_slot(lib):
    slot = init_token(lib, b"first")
    assert lib.free_slot != slot
    assert sorted(lib.get_slot_list(True)) == sorted([slot, lib.free_slot])
    info = lib.get_token_info(slot)
    assert info["label"] == b"first".ljust(32)
    assert info["flags"] & C.CKF_TOKEN_INITIALIZED and info["flags"] & C.CKF_USER_PIN_INITIALIZED
    assert len(info["serial_number"]) == 16


def test_slot_and_session_handles_are_checked(lib):
    assert rv(lib.get_token_info, 999) == C.CKR_SLOT_ID_INVALID
    assert rv(lib.get_session_info, 12345) == C.CKR_SESSION_HANDLE_INVALID
    assert rv(lib.open_session, lib.free_slot, C.CKF_RW_SESSION) == C.CKR_SESSION_PARALLEL_NOT_SUPPORTED


def test_init_token_refused_while_sessions_open(lib, slot):
    lib.open_session(slot, RO)
    assert rv(lib.init_token, slot, SO_PIN, b"x".ljust(32)) == C.CKR_SESSION_EXISTS


def test_session_states_follow_login(shared):
    lib, slot = shared
    ro, rw = lib.open_session(slot, RO), lib.open_session(slot, RW)
    try:
        assert lib.get_session_info(ro)["state"] == C.CKS_RO_PUBLIC_SESSION
        assert lib.get_session_info(rw)["state"] == C.CKS_RW_PUBLIC_SESSION
        assert lib.get_session_info(rw)["flags"] == C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
        lib.login(ro, C.CKU_USER, USER_PIN)
        assert lib.get_session_info(ro)["state"] == C.CKS_RO_USER_FUNCTIONS
        assert lib.get_session_info(rw)["state"] == C.CKS_RW_USER_FUNCTIONS
        assert rv(lib.login, rw, C.CKU_USER, USER_PIN) == C.CKR_USER_ALREADY_LOGGED_IN
        assert rv(lib.login, rw, C.CKU_SO, SO_PIN) == C.CKR_USER_ANOTHER_ALREADY_LOGGED_IN
        lib.logout(rw)
        assert lib.get_session_info(ro)["state"] == C.CKS_RO_PUBLIC_SESSION
        assert rv(lib.logout, rw) == C.CKR_USER_NOT_LOGGED_IN
        # the SO cannot log in while a read-only session exists
        assert rv(lib.login, rw, C.CKU_SO, SO_PIN) == C.CKR_SESSION_READ_ONLY_EXISTS
        assert rv(lib.login, rw, 7, USER_PIN) == C.CKR_USER_TYPE_INVALID
    finally:
        lib.close_all_sessions(slot)


def test_so_session_rules(shared):
    lib, slot = shared
    rw = lib.open_session(slot, RW)
    try:
        lib.login(rw, C.CKU_SO, SO_PIN)
        assert lib.get_session_info(rw)["state"] == C.CKS_RW_SO_FUNCTIONS
        assert rv(lib.open_session, slot, RO) == C.CKR_SESSION_READ_WRITE_SO_EXISTS
    finally:
        lib.close_all_sessions(slot)


def test_closing_last_session_logs_out(shared):
    lib, slot = shared
    s = lib.open_session(slot, RO)
    lib.login(s, C.CKU_USER, USER_PIN)
    lib.close_session(s)
    s = lib.open_session(slot, RO)
    assert lib.get_session_info(s)["state"] == C.CKS_RO_PUBLIC_SESSION
    lib.close_session(s)


def test_init_pin_needs_so_and_set_pin_changes_it(lib, slot):
    s = lib.open_session(slot, RW)
    assert rv(lib.init_pin, s, b"12345678") == C.CKR_USER_NOT_LOGGED_IN
    assert rv(lib.set_pin, s, USER_PIN, b"abc") == C.CKR_PIN_LEN_RANGE
    lib.set_pin(s, USER_PIN, b"new-pin-99")
    assert rv(lib.login, s, C.CKU_USER, USER_PIN) == C.CKR_PIN_INCORRECT
    lib.login(s, C.CKU_USER, b"new-pin-99")
    ro = lib.open_session(slot, RO)
    assert rv(lib.set_pin, ro, b"new-pin-99", USER_PIN) == C.CKR_SESSION_READ_ONLY


def test_wrong_pins_lock_and_flags_say_so(lib, slot):
    s = lib.open_session(slot, RW)
    flags = lambda: lib.get_token_info(slot)["flags"]  # noqa: E731
    assert rv(lib.login, s, C.CKU_USER, b"wrong-pin") == C.CKR_PIN_INCORRECT
    assert flags() & C.CKF_USER_PIN_COUNT_LOW
    for _ in range(8):
        assert rv(lib.login, s, C.CKU_USER, b"wrong-pin") == C.CKR_PIN_INCORRECT
    assert flags() & C.CKF_USER_PIN_FINAL_TRY
    assert rv(lib.login, s, C.CKU_USER, b"wrong-pin") == C.CKR_PIN_INCORRECT
    assert flags() & C.CKF_USER_PIN_LOCKED
    assert rv(lib.login, s, C.CKU_USER, USER_PIN) == C.CKR_PIN_LOCKED
    # the SO can give the user a new PIN, which unlocks it
    lib.login(s, C.CKU_SO, SO_PIN)
    lib.init_pin(s, b"fresh-pin")
    lib.logout(s)
    assert not flags() & (C.CKF_USER_PIN_LOCKED | C.CKF_USER_PIN_COUNT_LOW)
    lib.login(s, C.CKU_USER, b"fresh-pin")


def test_reinit_token_needs_so_pin_and_wipes_objects(lib, slot):
    from .tmpl import T
    s = lib.open_session(slot, RW)
    lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, LABEL=b"doomed"))
    lib.close_session(s)
    assert rv(lib.init_token, slot, b"not-the-so", b"again".ljust(32)) == C.CKR_PIN_INCORRECT
    lib.init_token(slot, SO_PIN, b"again".ljust(32))
    assert lib.get_token_info(slot)["label"] == b"again".ljust(32)
    assert not lib.get_token_info(slot)["flags"] & C.CKF_USER_PIN_INITIALIZED
    s = lib.open_session(slot, RO)
    lib.find_objects_init(s, [])
    assert lib.find_objects(s, 10) == []


def test_new_token_seen_by_second_library(tmp_path):
    a = make_library(tmp_path)
    b = make_library(tmp_path)
    init_token(a, b"shared")
    labels = [b.get_token_info(sid)["label"] for sid in b.get_slot_list(True)]
    assert b"shared".ljust(32) in labels
    a.finalize()
    b.finalize()


def test_random(user):
    lib, s = user
    assert len(lib.generate_random(s, 64)) == 64
    assert lib.generate_random(s, 32) != lib.generate_random(s, 32)
    lib.seed_random(s, b"some extra entropy")
