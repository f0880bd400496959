"""The TPM anchor (provider/store/anchor.py) against swtpm, in-process: what exactly a file
writer can still undo.  A spy keeps the token record after every committed store
transaction, so a test can put back the record from just before any one write - the
strongest rewind there is (tests/security/test_anchor.py does it through the C ABI with
whole-file copies)."""

import copy
from contextlib import contextmanager

import pytest

from provider import constants as C
from provider.backends.tpm2 import Tpm2Backend
from provider.store import anchor as A
from tests.backends.engine_env import rv
from tests.unit.stores import KINDS

SO, OLD, NEW, WRONG = b"so-pin-1", b"user-pin-1", b"user-pin-2", b"wrong-pin"


class Backends:
    def __init__(self, tcti):
        self.tpm = Tpm2Backend(tcti, name="tpm", timeout=20.0)

    def get(self, name):
        return self.tpm


@pytest.fixture
def tpm(swtpm):
    backends = Backends(swtpm.tcti)
    yield A.TpmAnchor(backends, "tpm")
    backends.tpm.close()


def spied(tpm):
    """A MemoryStore with the anchor, and the list of its committed token records."""
    store = KINDS["memory"](None, None).open(3)
    store.anchor = tpm
    raw, records = type(store)._write.__get__(store), []

    @contextmanager
    def write():
        outer = store.data["depth"] == 0
        with raw() as tx:
            yield tx
        if outer:
            records.append(copy.deepcopy(store.data["token"]))
    store._write = A.guard(store, write)
    return store, records


def ready(tpm):
    store, records = spied(tpm)
    store.initialize(b"anchored", SO)
    store.login(C.CKU_SO, SO)
    store.init_pin(OLD)
    store.logout()
    return store, records


def put_back(store, record):
    store.data["token"] = copy.deepcopy(record)


def test_set_pin_cannot_be_undone_by_one_record(tpm):
    """The record from right before C_SetPIN's new wrap (one write behind it) is refused:
    the wrap's write was confirmed by a second increment.  The record from between the
    wrap and its confirmation is the new PIN's: accepted (a crash there is survivable)."""
    store, records = ready(tpm)
    del records[:]
    store.set_pin(C.CKU_USER, OLD, NEW)
    wrap_at = next(i for i, r in enumerate(records) if r["user_wrap"] != records[0]["user_wrap"])
    assert wrap_at >= 1 and wrap_at + 1 < len(records)          # the wrap, then its confirmation
    current = copy.deepcopy(store.data["token"])
    put_back(store, records[wrap_at - 1])                        # the last record with the old wrap
    assert rv(store.login, C.CKU_USER, OLD) == C.CKR_DEVICE_ERROR
    put_back(store, records[wrap_at])                            # the new wrap, not yet confirmed
    assert rv(store.login, C.CKU_USER, NEW) == C.CKR_OK
    put_back(store, current)
    assert rv(store.login, C.CKU_USER, NEW) == C.CKR_DEVICE_ERROR   # the login moved the counter on


def test_rewinding_failures_wins_one_try_in_all(tpm):
    """Putting back the record from before the last wrong PIN after every try (the best a
    file writer can do: older ones are two behind) gives one wrong try beyond the limit."""
    store, records = ready(tpm)
    tries = 0
    while True:
        before = copy.deepcopy(store.data["token"])
        got = rv(store.login, C.CKU_USER, WRONG)
        if got != C.CKR_PIN_INCORRECT:
            break
        tries += 1
        put_back(store, before)
        assert tries < 10
    assert got in (C.CKR_DEVICE_ERROR, C.CKR_PIN_LOCKED)
    assert tries <= store.max_failures + 1


def test_removed_anchor_and_foreign_tpm_refused(tpm):
    """A record whose anchor field was emptied, or whose TPM holds no anchor for it."""
    store, _ = ready(tpm)
    store.data["token"]["anchor"] = None
    assert rv(store.login, C.CKU_USER, OLD) == C.CKR_DEVICE_ERROR
    other, _ = spied(tpm)
    other.data["token"] = dict(copy.deepcopy(store.data["token"]), serial="0123456789abcdef",
                               anchor=bytes(40))
    assert tpm.read("0123456789abcdef") is None
    assert rv(other.login, C.CKU_USER, OLD) == C.CKR_DEVICE_ERROR


def test_unanchored_token_adopted(tpm):
    """A token made without the anchor is anchored by its first write once it is on."""
    store = KINDS["memory"](None, None).open(3)
    store.initialize(b"plain", SO)
    assert store.data["token"]["anchor"] is None and tpm.read(store.serial) is None
    store.anchor = tpm
    assert rv(store.login, C.CKU_SO, SO) == C.CKR_OK
    count = int.from_bytes(store.data["token"]["anchor"][:8], "big")
    assert tpm.read(store.serial) == count


@pytest.fixture(params=sorted(KINDS))
def kind(request, tmp_path):
    return KINDS[request.param](tmp_path, request)


def test_every_store_kind(tpm, kind):
    """Each store kind, two store objects on one token (two processes): the writes of one
    keep the other's checks passing; a failure count set back by a raw write (as someone
    with the storage would: no anchor advance) is refused to both."""
    a, b = kind.open(3), kind.open(3)
    a.anchor = b.anchor = tpm
    a.initialize(b"kinds", SO)
    assert rv(a.login, C.CKU_SO, SO) == C.CKR_OK
    assert rv(b.login, C.CKU_SO, WRONG) == C.CKR_PIN_INCORRECT
    assert rv(a.login, C.CKU_SO, WRONG) == C.CKR_PIN_INCORRECT
    assert a.pin_flags() & C.CKF_SO_PIN_COUNT_LOW
    with type(b)._write(b):
        b._update({"so_fail": 0})
    for store in (a, b):
        assert rv(store.login, C.CKU_SO, SO) == C.CKR_DEVICE_ERROR
        store.close()
