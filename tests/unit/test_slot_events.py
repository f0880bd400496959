"""C_WaitForSlotEvent's engine side: provider/slot_events.py and the library's poll."""

import threading

import pytest

from provider import constants as C
from provider.errors import PKCS11Error
from provider.slot_events import SlotEvents

from .conftest import SO_PIN, make_library

BLOCK, DONT_BLOCK = True, False


def rv(fn, *args, **kw):
    with pytest.raises(PKCS11Error) as info:
        fn(*args, **kw)
    return info.value.rv


def wait(lib, block):
    return lib.slot_events.wait(lib.poll_slot_event, block=block)


def in_thread(fn):
    """Run fn() in a thread; a function for its outcome (the slot or the rv)."""
    result = []

    def run():
        try:
            result.append(fn())
        except PKCS11Error as err:
            result.append(("rv", err.rv))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def outcome():
        thread.join(30)                    # a hang fails the test instead of blocking it
        assert not thread.is_alive(), "C_WaitForSlotEvent did not return"
        return result[0]
    return outcome


def test_quiet_library_has_no_event(lib):
    assert lib.poll_slot_event() is None
    assert rv(wait, lib, DONT_BLOCK) == C.CKR_NO_EVENT


def test_token_made_by_another_process_is_an_event_once(lib, tmp_path):
    other = make_library(tmp_path)         # another process: same token directory
    other.init_token(other.free_slot, SO_PIN, b"elsewhere".ljust(32))
    other.finalize()
    slot = wait(lib, DONT_BLOCK)
    assert lib.get_token_info(slot)["label"] == b"elsewhere".ljust(32)
    assert rv(wait, lib, DONT_BLOCK) == C.CKR_NO_EVENT


def test_init_token_here_reports_the_token_and_the_new_free_slot(lib):
    slot = lib.free_slot
    lib.init_token(slot, SO_PIN, b"here".ljust(32))
    assert [wait(lib, DONT_BLOCK), wait(lib, DONT_BLOCK)] == [slot, lib.free_slot]
    assert rv(wait, lib, DONT_BLOCK) == C.CKR_NO_EVENT


def test_blocking_wait_wakes_on_a_new_token(lib, tmp_path):
    outcome = in_thread(lambda: wait(lib, BLOCK))
    other = make_library(tmp_path)
    other.init_token(other.free_slot, SO_PIN, b"late".ljust(32))
    other.finalize()
    slot = outcome()
    assert lib.get_token_info(slot)["label"] == b"late".ljust(32)


def test_finalize_wakes_a_blocked_wait(tmp_path):
    lib = make_library(tmp_path)
    outcome = in_thread(lambda: wait(lib, BLOCK))
    lib.finalize()
    assert outcome() == ("rv", C.CKR_CRYPTOKI_NOT_INITIALIZED)
    assert rv(lib.poll_slot_event) == C.CKR_CRYPTOKI_NOT_INITIALIZED


def test_presence_change_is_an_event():
    events = SlotEvents({0: (True, b"t", "1"), 1: (True, None, None)})
    assert events.update({0: (False, b"t", "1"), 1: (True, None, None)}) == 0
    assert events.update({0: (False, b"t", "1"), 1: (True, None, None)}) is None
    assert events.update({0: (True, b"t", "1"), 1: (True, None, None), 2: (True, None, None)}) == 0
    assert events.update({0: (True, b"t", "1"), 1: (True, None, None), 2: (True, None, None)}) == 2
