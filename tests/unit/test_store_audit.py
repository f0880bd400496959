"""The store's audit tables (base.TokenStore.audit_*), over every store kind
(tests/unit/stores.py): append in seq order only, in the caller's transaction (a
change and its record commit together or not at all), seen by a second store object
on the token at once, checkpoints, and a prune that keeps its anchor."""

import hashlib

import pytest

from provider.store.base import Conflict

from .test_store import aes_key, backend, store  # noqa: F401 - the fixtures over every store kind
from .test_store import AES_SECRET, USER

from provider import constants as C


def rows(start, count):
    return [(s, hashlib.sha256(b"%d" % s).digest(), b"record %d" % s) for s in range(start, start + count)]


def test_a_fresh_log_is_empty(store):
    assert store.audit_head() == (0, b"")
    assert store.audit_read(0, 10) == [] and store.audit_checkpoints() == []


def test_append_in_order_and_read_back(store):
    store.audit_append(rows(1, 3))
    store.audit_append(rows(4, 2))
    assert store.audit_head() == (5, rows(5, 1)[0][1])
    assert store.audit_read(0, 100) == rows(1, 5)
    assert store.audit_read(2, 2) == rows(3, 2)
    assert store.audit_read(5, 10) == []


@pytest.mark.parametrize("bad", [rows(2, 2), rows(1, 1) + rows(3, 1), rows(0, 1)], ids=["gap", "gap-inside", "zero"])
def test_a_gap_is_refused_and_nothing_written(store, bad):
    with pytest.raises(Conflict):
        store.audit_append(bad)
    assert store.audit_head() == (0, b"") and store.audit_read(0, 10) == []


def test_a_rewrite_of_a_written_seq_is_refused(store):
    store.audit_append(rows(1, 2))
    with pytest.raises(Conflict):
        store.audit_append([(2, b"x" * 32, b"forged")])
    assert store.audit_read(0, 10) == rows(1, 2)


def test_a_change_and_its_record_commit_together(store):
    store.login(C.CKU_USER, USER)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.save_object("obj-1", aes_key(), AES_SECRET)
            store.audit_append(rows(1, 1))
            raise RuntimeError("the operation failed")
    assert store.audit_head() == (0, b"") and store.load("obj-1") is None
    with store.transaction():
        store.save_object("obj-1", aes_key(), AES_SECRET)
        store.audit_append(rows(1, 1))
        assert store.audit_head()[0] == 1          # the open transaction reads its own rows
    assert store.audit_read(0, 10) == rows(1, 1) and store.load("obj-1") is not None


def test_audit_writes_do_not_move_the_change_feed(store):
    head = store.head()
    store.audit_append(rows(1, 4))
    assert store.head() == head


def test_another_store_object_sees_the_records_at_once(backend, store):
    other = backend.open()
    try:
        store.audit_append(rows(1, 2))
        assert other.audit_head() == (2, rows(2, 1)[0][1])
        with pytest.raises(Conflict):                 # it read the head before: it lost the race
            other.audit_append(rows(2, 1))
        other.audit_append(rows(3, 1))
        assert store.audit_read(0, 10) == rows(1, 3)
    finally:
        other.close()


def test_checkpoints_in_order_within_the_log(store):
    store.audit_append(rows(1, 5))
    store.audit_put_checkpoint(3, b"d3", b"cp3")
    store.audit_put_checkpoint(5, b"d5", b"cp5")
    for seq in (5, 4, 6):
        with pytest.raises(ValueError):
            store.audit_put_checkpoint(seq, b"d", b"cp")
    assert store.audit_checkpoints() == [(3, b"d3", b"cp3"), (5, b"d5", b"cp5")]
    assert store.audit_checkpoints(3) == [(5, b"d5", b"cp5")]


def test_prune_keeps_the_anchor_and_the_rest(store):
    store.audit_append(rows(1, 6))
    store.audit_put_checkpoint(2, b"d2", b"cp2")
    store.audit_put_checkpoint(4, b"d4", b"cp4")
    with pytest.raises(ValueError):                  # no checkpoint there to anchor the cut
        store.audit_prune(3)
    assert store.audit_prune(4) == 4
    assert store.audit_read(0, 100) == rows(5, 2)
    assert store.audit_checkpoints() == [(4, b"d4", b"cp4")]
    store.audit_append(rows(7, 1))                     # the log goes on after the cut
    assert store.audit_head()[0] == 7


def test_prune_of_everything_leaves_the_anchor_as_head(backend, store):
    store.audit_append(rows(1, 3))
    store.audit_put_checkpoint(3, b"d3", b"cp3")
    assert store.audit_prune(3) == 3
    assert store.audit_read(0, 10) == []
    other = backend.open()
    try:
        assert other.audit_head() == (3, b"d3")
        other.audit_append(rows(4, 1))
    finally:
        other.close()
    assert store.audit_read(0, 10) == rows(4, 1)


def test_the_audit_log_over_this_store(backend, store):
    """provider/audit's Audit on this store kind: concurrent record() (group commit), a
    record in a change's transaction, a checkpoint, a prune; it verifies from another
    store object on the token."""
    import threading
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provider.audit import Audit, Event, Signer, verify
    from provider.audit import verifier as V
    from provider.principal import Principal

    key, signer = b"h" * 32, Signer(Ed25519PrivateKey.generate())
    audit = Audit(store, key, signer)
    threads = [threading.Thread(target=lambda t=t: [audit.record(Event(Principal(f"t{t}"), "sign.init", f"k{i}"))
                                                   for i in range(15)]) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.login(C.CKU_USER, USER)
    with store.transaction():
        store.save_object("obj-1", aes_key(), AES_SECRET)
        audit.record_in(Event(Principal("op"), "key.create", "obj-1"))
    assert audit.checkpoint().seq == 61 and audit.records == 60 and audit.commits <= 60
    audit.record(Event(Principal("op"), "key.rotate", "obj-1"))
    assert audit.prune(0, now_ns=time.time_ns() + 86400 * 10**9) == 62
    audit.record(Event(Principal("op"), "key.rotate", "obj-1"))
    other = backend.open()
    try:
        report = verify(V.rows_of(other), V.checkpoints_of_store(other), signer.public, key)
        assert report.ok and report.first == 63 and report.records == 1, report.text()
    finally:
        other.close()
