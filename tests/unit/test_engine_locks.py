"""One lock per token, and slow work outside it: while one thread is inside a PIN
key derivation, other threads go on, on another token and on the same one."""

import threading

from provider import constants as C
from provider.store import sealing

from .conftest import RW, USER_PIN, init_token, make_library
from .tmpl import T

AES = dict(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=bytes(32), ENCRYPT=True, PRIVATE=False)


def test_pin_derivation_blocks_no_one(tmp_path, monkeypatch):
    lib = make_library(tmp_path)
    one, two = init_token(lib, b"one"), init_token(lib, b"two")
    inside, others_done = threading.Event(), threading.Event()
    real = sealing.pin_kek

    def held_open(tok, who, pin):          # the KDF of thread A waits until the others are through
        inside.set()
        others_done.wait(10)
        return real(tok, who, pin)

    s_one = lib.open_session(one, RW)
    s_one_public = lib.open_session(one, RW)
    s_two = lib.open_session(two, RW)
    monkeypatch.setattr(sealing, "pin_kek", held_open)
    login = threading.Thread(target=lib.login, args=(s_one, C.CKU_USER, USER_PIN))
    login.start()
    assert inside.wait(10)
    done = []

    def others():
        for session in (s_two, s_one_public):   # another token, and the same token
            h = lib.create_object(session, T(**AES, LABEL=b"k"))
            lib.find_objects_init(session, T(LABEL=b"k"))
            done.append(lib.find_objects(session, 5) == [h])
            lib.find_objects_final(session)
            done.append(lib.get_token_info(one)["session_count"] == 2)
        others_done.set()
    worker = threading.Thread(target=others)
    worker.start()
    worker.join(10)
    assert others_done.is_set() and done == [True] * 4, "a call waited for another thread's PIN derivation"
    login.join(10)
    assert lib.get_session_info(s_one)["state"] == C.CKS_RW_USER_FUNCTIONS
    lib.finalize()


def test_login_race_on_one_token(tmp_path, monkeypatch):
    """Two sessions log in at once: one wins, the other hears it is logged in already."""
    lib = make_library(tmp_path)
    slot = init_token(lib)
    both, real = threading.Barrier(2), sealing.pin_kek

    def in_step(tok, who, pin):
        both.wait(10)                          # both threads are inside the derivation together
        return real(tok, who, pin)
    monkeypatch.setattr(sealing, "pin_kek", in_step)
    sessions = [lib.open_session(slot, RW) for _ in range(2)]
    results = []

    def login(s):
        try:
            lib.login(s, C.CKU_USER, USER_PIN)
            results.append(C.CKR_OK)
        except Exception as err:               # PKCS11Error
            results.append(err.rv)
    threads = [threading.Thread(target=login, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [C.CKR_OK, C.CKR_USER_ALREADY_LOGGED_IN]
    assert all(lib.get_session_info(s)["state"] == C.CKS_RW_USER_FUNCTIONS for s in sessions)
    lib.finalize()
