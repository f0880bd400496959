"""The audit chain (provider/audit/): Merkle trees against pymerkle, records written
and verified through real stores, every kind of tampering caught at every position
of a small log, group commit, fail closed, checkpoints signed by a key in the token,
retention with an anchor, the file sink and export."""

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymerkle import InmemoryTree, verify_consistency, verify_inclusion

from provider import constants as C
from provider.audit import Audit, AuditUnavailable, Event, Signer, merkle, token_signer, verify
from provider.audit import verifier as V
from provider.audit.record import MAC_LEN, parse_line
from provider.principal import Principal
from provider.store.memory import MemoryStore
from provider.store.sqlite import SqliteStore

from .conftest import USER_PIN
from .stores import FAST

KEY = b"k" * 32
ACTOR = Principal("svc:ci", frozenset({"service"}), "rest", "sess-1", "fp:ab", "10.0.0.7", "req-42")


def event(i=0, **kw):
    return Event(ACTOR, kw.pop("action", "sign.init"), kw.pop("key_id", "key-%d" % i), kw.pop("key_version", 1), **kw)


def new_store(kind, tmp_path):
    store = MemoryStore(pin_policy=FAST) if kind == "memory" else SqliteStore(str(tmp_path / "t.sqlite"),
                                                                             pin_policy=FAST)
    store.initialize(b"audit".ljust(32), b"so-pin-1")
    return store


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = new_store(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture
def signer():
    return Signer(Ed25519PrivateKey.generate())


def lines_of_store(store):
    return list(V.rows_of(store))


# --- Merkle trees: ours against pymerkle -------------------------------------------------
def test_roots_and_proofs_agree_with_pymerkle():
    data = [b"record %d" % i for i in range(70)]
    leaves = [merkle.leaf_hash(d) for d in data]
    tree = InmemoryTree(algorithm="sha256")
    frontier = merkle.Frontier()
    for n, d in enumerate(data, 1):
        tree.append_entry(d)
        frontier.append(leaves[n - 1])
        root = merkle.root_of(leaves[:n])
        assert root == tree.get_root(n) == frontier.root()
    rng = random.Random(6962)
    for _ in range(150):
        size = rng.randint(1, 70)
        index = rng.randrange(size)
        root = merkle.root_of(leaves[:size])
        path = merkle.inclusion_proof(leaves[:size], index)
        assert merkle.verify_inclusion(leaves[index], index, size, path, root)
        theirs = tree.prove_inclusion(index + 1, size)             # (pymerkle counts from 1)
        verify_inclusion(leaves[index], root, theirs)              # raises if it does not hold
        assert not merkle.verify_inclusion(leaves[index], index, size, path, hashlib.sha256(b"x").digest())
        if size > 1:
            wrong = (index + 1) % size
            assert not merkle.verify_inclusion(leaves[wrong], index, size, path, root)
        old = rng.randint(1, size)
        cproof = merkle.consistency_proof(leaves[:size], old)
        old_root = merkle.root_of(leaves[:old])
        assert merkle.verify_consistency(old, size, old_root, root, cproof)
        verify_consistency(old_root, root, tree.prove_consistency(old, size))
        if old < size:
            assert not merkle.verify_consistency(old, size, merkle.root_of(leaves[1:old + 1]), root, cproof)


def test_frontier_goes_on_from_a_saved_one():
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(41)]
    a = merkle.Frontier()
    for h in leaves[:23]:
        a.append(h)
    b = merkle.Frontier(a.size, a.hashes)
    for h in leaves[23:]:
        b.append(h)
    assert b.root() == merkle.root_of(leaves)
    with pytest.raises(ValueError):
        merkle.Frontier(5, [leaves[0]])


# --- records, chain, verification ----------------------------------------------------------
def test_records_chain_and_verify(store, signer):
    audit = Audit(store, KEY, signer)
    receipts = [audit.record(event(i)) for i in range(20)]
    assert [r.seq for r in receipts] == list(range(1, 21))
    cp = audit.checkpoint()
    assert cp.seq == 20 and cp.head == receipts[-1].digest
    report = verify(V.rows_of(store), V.checkpoints_of_store(store), signer.public, KEY)
    assert report.ok and report.records == 20 and report.checkpoints == 1, report.text()
    assert audit.checkpoint() is None                        # nothing new: no checkpoint


def test_a_record_holds_the_context_and_no_secret(store):
    audit = Audit(store, KEY)
    audit.record(Event(ACTOR, "encrypt.init", "kid-1", 3, "denied", "state disabled"))
    (mac, body), = lines_of_store(store)
    fields = json.loads(body)
    assert {k: fields[k] for k in ("actor", "roles", "interface", "session", "client", "source", "correlation_id",
                                   "action", "key_id", "key_version", "outcome", "message", "seq")} == {
        "actor": "svc:ci", "roles": "service", "interface": "rest", "session": "sess-1", "client": "fp:ab",
        "source": "10.0.0.7", "correlation_id": "req-42", "action": "encrypt.init", "key_id": "kid-1",
        "key_version": 3, "outcome": "denied", "message": "state disabled", "seq": 1}
    assert fields["time"].endswith("Z") and len(fields["uuid"]) == 36 and len(mac) == MAC_LEN
    assert KEY not in body and KEY.hex().encode() not in body


def test_bad_events_are_refused():
    with pytest.raises(ValueError):
        Event(ACTOR, "sign.init", outcome="maybe")
    with pytest.raises(ValueError):
        Event(ACTOR, "", "k")
    with pytest.raises(ValueError):
        Audit(MemoryStore(), b"short")


def small_log(n=60, every=20):
    """(lines, checkpoints, public key) of an n-record log, a checkpoint every `every`."""
    store = new_store("memory", None)
    s = Signer(Ed25519PrivateKey.generate())
    audit = Audit(store, KEY, s)
    for i in range(n):
        audit.record(event(i))
        if (i + 1) % every == 0:
            audit.checkpoint()
    return lines_of_store(store), V.checkpoints_of_store(store), s.public


def tampered(lines, kind, k):
    """The log with one tampering of `kind` at 0-based position k."""
    out = list(lines)
    if kind == "edit":
        mac, body = out[k]
        out[k] = (mac, body.replace(b'"outcome":"ok"', b'"outcome":"denied"'))
    elif kind == "delete":
        del out[k]
    elif kind == "insert":
        out.insert(k, out[(k + 7) % len(out)])
    elif kind == "reorder":
        out[k], out[k + 1] = out[k + 1], out[k]
    elif kind == "truncate":
        out = out[:k]
    return out


KINDS = {"edit": lambda n: range(n), "delete": lambda n: range(n), "insert": lambda n: range(n + 1),
         "reorder": lambda n: range(n - 1), "truncate": lambda n: range(n)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_single_tampering_at_every_position_is_caught(kind):
    lines, cps, public = small_log()
    assert verify(lines, cps, public, KEY).ok
    caught = 0
    positions = list(KINDS[kind](len(lines)))
    for k in positions:
        report = verify(tampered(lines, kind, k), cps, public, KEY)
        assert not report.ok, (kind, k)
        caught += 1
        if kind == "edit":
            assert report.bad_seq == k + 1          # the HMAC names the record itself
    assert caught == len(positions)


def test_without_the_hmac_key_the_chain_and_checkpoints_still_catch_edits():
    lines, cps, public = small_log()
    for k in range(len(lines)):
        report = verify(tampered(lines, "edit", k), cps, public, None)
        assert not report.ok and report.bad_seq in (k + 1, k + 2, 60), k


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint():
    """Someone who has the HMAC key rewrites record 5 and every record after it
    consistently: only the checkpoint (signed by the token's key) catches it."""
    lines, cps, public = small_log()
    from provider.audit.record import chain, mac_of
    out, prev = lines[:4], json.loads(lines[3][1])
    prev = chain(bytes.fromhex(prev["prev"]), lines[3][1])
    for mac, body in lines[4:]:
        fields = json.loads(body)
        if fields["seq"] == 5:
            fields["outcome"] = "denied"
        fields["prev"] = prev.hex()
        body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        prev = chain(prev, body)
        out.append((mac_of(KEY, prev), body))
    assert verify(out, [], public, KEY).ok                  # the chain alone is fooled
    report = verify(out, cps, public, KEY)
    assert not report.ok and report.bad_seq == 20 and "checkpoint" in report.reason


def test_a_forged_checkpoint_is_refused():
    lines, cps, public = small_log()
    other = Signer(Ed25519PrivateKey.generate())
    from provider.audit import checkpoint as cpm
    forged = cpm.make(other, cps[0].seq, cps[0].head, cps[0].frontier, time.time_ns())
    assert not verify(lines, [forged] + cps[1:], public, KEY).ok
    assert verify(lines, cps, other.public, KEY).reason.startswith("checkpoint signature")


# --- the store sinks, group commit, fail closed --------------------------------------------------
def test_group_commit_shares_transactions_and_each_waits_for_its_own(tmp_path, signer):
    store = new_store("sqlite", tmp_path)
    audit = Audit(store, KEY, signer)
    got, errors = {}, []

    def worker(t):
        try:
            for i in range(50):
                receipt = audit.record(event(t * 1000 + i))
                # durable: another connection to the file sees it when record() returns
                other = SqliteStore(store.path, pin_policy=FAST)
                try:
                    assert other.audit_head()[0] >= receipt.seq
                    row = other.audit_read(receipt.seq - 1, 1)[0]
                    assert row[1] == receipt.digest and json.loads(row[2][MAC_LEN:])["key_id"] == f"key-{t * 1000 + i}"
                finally:
                    other.close()
                got.setdefault(t, []).append(receipt.seq)
        except Exception as exc:       # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    seqs = sorted(s for v in got.values() for s in v)
    assert seqs == list(range(1, 401))
    assert audit.records == 400 and audit.commits < 400
    assert verify(V.rows_of(store), [], None, KEY).ok
    store.close()


def test_submitted_records_share_commits_and_resolve_when_durable(tmp_path, monkeypatch):
    """submit() (the service's event loop: it must not block) queues without waiting:
    one thread queues 300 records, the writer thread commits them in fewer transactions,
    each Future gives its own record's receipt once another connection sees it, record()
    callers meanwhile join the same chain, and the writer ends when idle."""
    from provider.audit import log as audit_log
    monkeypatch.setattr(audit_log, "WRITER_IDLE", 0.2)
    store = new_store("sqlite", tmp_path)
    audit = Audit(store, KEY)
    futures = [audit.submit(event(i)) for i in range(300)]
    assert audit.record(event(1000)).seq >= 1
    receipts = [f.result(timeout=30) for f in futures]
    other = SqliteStore(store.path, pin_policy=FAST)
    try:
        assert other.audit_head()[0] == 301
        for i, receipt in enumerate(receipts):
            row = other.audit_read(receipt.seq - 1, 1)[0]
            assert row[1] == receipt.digest and json.loads(row[2][MAC_LEN:])["key_id"] == f"key-{i}"
    finally:
        other.close()
    assert sorted(r.seq for r in receipts) == [r.seq for r in receipts]       # queued order is chain order
    assert audit.records == 301 and audit.commits < 301
    assert verify(V.rows_of(store), [], None, KEY).ok
    deadline = time.monotonic() + 5
    while audit._writer is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert audit._writer is None                       # no thread left behind by an idle log
    assert audit.submit(event(2000)).result(timeout=30).seq == 302        # and a new one starts
    store.close()


def test_submitted_records_fail_closed(store):
    """A submitted record that cannot be made durable fails its Future with
    AuditUnavailable (the service then answers 503 and keeps the result), and nothing of
    it stays in the store."""
    audit = Audit(store, KEY, file="/dev/full")
    futures = [audit.submit(event(i)) for i in range(5)]
    for f in futures:
        with pytest.raises(AuditUnavailable):
            f.result(timeout=30)
    assert store.audit_head() == (0, b"")


def test_record_in_commits_with_the_change_or_not_at_all(store):
    audit = Audit(store, KEY)
    with pytest.raises(RuntimeError):
        with store.transaction():
            audit.record_in(event(1, action="key.rotate"))
            raise RuntimeError("the transition failed")
    assert store.audit_head() == (0, b"")
    with store.transaction():
        receipt = audit.record_in(event(1, action="key.rotate"))
    assert receipt.seq == 1 and audit.record(event(2)).seq == 2
    assert verify(V.rows_of(store), [], None, KEY).ok


FAIL_CLOSED = r"""
import os, resource, signal, sys
sys.path.insert(0, os.getcwd())
from provider.audit import Audit, AuditUnavailable, Event
from provider.principal import Principal
from provider.store.sqlite import SqliteStore
from tests.unit.stores import FAST
path = sys.argv[1]
store = SqliteStore(path, pin_policy=FAST)
audit = Audit(store, b"k" * 32)
audit.record(Event(Principal("a"), "before"))             # the log works ...
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)              # ... then no file may grow: writes fail EFBIG
limit = max(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
for i in range(1000):
    try:
        audit.record(Event(Principal("a"), "after", message="x" * 500))
    except AuditUnavailable as exc:
        print("unavailable after", i, "records:", exc)
        sys.exit(0)
print("still writing")
sys.exit(1)
"""


def test_fail_closed_when_the_store_cannot_be_written(tmp_path):
    """The token file cannot grow (RLIMIT_FSIZE in a child process: a real write
    failure): record() raises AuditUnavailable, and nothing half-written stays - the
    log the next process opens verifies."""
    new_store("sqlite", tmp_path).close()
    path = str(tmp_path / "t.sqlite")
    run = subprocess.run([sys.executable, "-c", FAIL_CLOSED, path], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         timeout=60)
    assert run.returncode == 0 and "unavailable after" in run.stdout, run.stdout + run.stderr
    written = int(run.stdout.split()[2]) + 1
    store = SqliteStore(path, pin_policy=FAST)
    rows = lines_of_store(store)
    assert len(rows) == written and verify(rows, [], None, KEY).ok
    Audit(store, KEY).record(event(1))                       # and the log goes on once it can
    assert verify(lines_of_store(store), [], None, KEY).ok
    store.close()


def test_fail_closed_when_the_file_sink_cannot_be_written(store):
    """The JSON-lines sink is a full disk (/dev/full: ENOSPC): record() raises and the
    store keeps nothing of it either (one transaction)."""
    audit = Audit(store, KEY, file="/dev/full")
    with pytest.raises(AuditUnavailable):
        audit.record(event(1))
    assert store.audit_head() == (0, b"")
    audit = Audit(store, KEY)
    assert audit.record(event(1)).seq == 1


def test_the_file_sink_copies_the_store_and_verifies(store, tmp_path, signer):
    sink = tmp_path / "audit.jsonl"
    audit = Audit(store, KEY, signer, file=sink, checkpoint_file=tmp_path / "cp.jsonl")
    for i in range(5):
        audit.record(event(i))
    with store.transaction():
        audit.record_in(event(99, action="key.create"))     # copied by the next commit
    audit.checkpoint()
    audit.record(event(6))
    assert [parse_line(line) for line in sink.read_bytes().splitlines()] == lines_of_store(store)
    report = verify(V.lines_of(sink), V.checkpoints_of_file(tmp_path / "cp.jsonl"), signer.public, KEY)
    assert report.ok and report.records == 7 and report.checkpoints == 1


def test_a_torn_last_line_of_the_file_sink_is_cut_off(store, tmp_path):
    sink = tmp_path / "audit.jsonl"
    audit = Audit(store, KEY, file=sink)
    audit.record(event(1))
    with open(sink, "ab") as f:
        f.write(b'{"mac":"00')                            # a writer died mid-line
    audit.record(event(2))
    assert [parse_line(line) for line in sink.read_bytes().splitlines()] == lines_of_store(store)


# --- retention ---------------------------------------------------------------------------------
def test_prune_keeps_an_anchor_and_the_rest_verifies(store, signer, tmp_path):
    audit = Audit(store, KEY, signer, checkpoint_file=tmp_path / "cp.jsonl")
    day = 86400 * 10**9
    for i in range(30):
        audit.record(event(i))
        if i == 19:
            audit.checkpoint()
    # a day later, with retention 0 days, every record is old: the cut is at a fresh
    # checkpoint at the head (30), which stays as the anchor
    assert audit.prune(retention_days=0, now_ns=time.time_ns() + day) == 30
    audit.record(event(31))
    report = verify(V.rows_of(store), V.checkpoints_of_store(store), signer.public, KEY)
    assert report.ok and report.first == 31, report.text()
    # with the records gone, the anchor is what vouches for where the log starts
    assert not verify(V.rows_of(store), [], signer.public, KEY).ok


def test_prune_at_an_older_checkpoint(store, signer):
    audit = Audit(store, KEY, signer)
    for i in range(10):
        audit.record(event(i))
    audit.checkpoint()
    time.sleep(0.01)
    cut = time.time_ns()
    time.sleep(0.01)
    for i in range(10):
        audit.record(event(i))
    assert audit.prune(retention_days=(time.time_ns() - cut) / 86400e9) == 10
    report = verify(V.rows_of(store), V.checkpoints_of_store(store), signer.public, KEY)
    assert report.ok and report.first == 11 and report.checkpoints == 1, report.text()


# --- the checkpoint key in the token -----------------------------------------------------------------
def test_checkpoint_key_is_a_private_sensitive_token_key(lib, slot):
    token = lib.tokens[slot]
    s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
    lib.login(s, C.CKU_USER, USER_PIN)
    with token.lock:
        first = token_signer(token)
        again = token_signer(token)
    assert first.public == again.public                       # made once, found after
    keys = [o for o in token.by_uid.values() if o.attrs.get(C.CKA_LABEL) == b"ferrohsm-audit-checkpoint"]
    priv = next(o for o in keys if o.attrs[C.CKA_CLASS] == C.CKO_PRIVATE_KEY)
    assert priv.attrs[C.CKA_PRIVATE] and priv.attrs[C.CKA_SENSITIVE] and not priv.attrs[C.CKA_EXTRACTABLE]
    assert not priv.attrs[C.CKA_DESTROYABLE]
    audit = Audit(token.store, KEY, lambda: token_signer(token))
    audit.record(event(1))
    with token.lock:
        cp = audit.checkpoint()
    assert cp.signed_by(first.public)
    lib.logout(s)
    with token.lock:
        with pytest.raises(Exception):
            token_signer(token)                              # no user logged in: no signing


def test_the_checkpointer_signs_every_n_records_and_every_t_seconds(store, signer):
    from provider.audit import Checkpointer
    audit = Audit(store, KEY, signer, checkpoint_every=10, checkpoint_seconds=1.5)
    thread = Checkpointer(audit)
    thread.start()
    try:
        for i in range(10):
            audit.record(event(i))
        deadline = time.monotonic() + 5
        while not store.audit_checkpoints() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [c[0] for c in store.audit_checkpoints()] == [10]       # the count, well before T
        audit.record(event(11))
        while len(store.audit_checkpoints()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [c[0] for c in store.audit_checkpoints()] == [10, 11]   # the time
    finally:
        thread.stop()
    assert verify(V.rows_of(store), V.checkpoints_of_store(store), signer.public, KEY).checkpoints == 2


WRITER = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from provider.audit import Audit, Event
from provider.principal import Principal
from provider.store.sqlite import SqliteStore
from tests.unit.stores import FAST
store = SqliteStore(sys.argv[1], pin_policy=FAST)
audit = Audit(store, b"k" * 32)
for i in range(int(sys.argv[2])):
    audit.record(Event(Principal(f"pid:{os.getpid()}"), "sign.init", f"k{i}"))
"""


def test_processes_writing_one_log_keep_one_chain(tmp_path):
    """Three processes append to one token's log at once: one chain, no record lost."""
    new_store("sqlite", tmp_path).close()
    path = str(tmp_path / "t.sqlite")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, "150"], cwd=root) for _ in range(2)]
    store = SqliteStore(path, pin_policy=FAST)
    audit = Audit(store, KEY)
    for i in range(150):
        audit.record(event(i))
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    report = verify(V.rows_of(store), [], None, KEY)
    assert report.ok and report.records == 450, report.text()
    actors = {json.loads(body)["actor"] for _, body in V.rows_of(store)}
    assert len(actors) == 3
    store.close()


def test_the_hmac_key_source(tmp_path, monkeypatch):
    from provider.audit import hmac_key
    from provider.config import Config
    conf = Config.parse(f'[tokens]\ndirectory = "{tmp_path / "tok"}"\n', str(tmp_path / "c.conf"))
    first = hmac_key(conf)                                    # default: made at first need, 0600
    path = tmp_path / "tok" / "audit-hmac.key"
    assert len(first) == 64 and os.stat(path).st_mode & 0o777 == 0o600
    assert hmac_key(conf) == first
    monkeypatch.setenv("FERRO_AUDIT_KEY", "x" * 40)
    conf = Config.parse('[audit]\nhmac_key = "env:FERRO_AUDIT_KEY"\n', str(tmp_path / "c.conf"))
    assert hmac_key(conf) == b"x" * 40
    os.chmod(path, 0o644)                                     # a key others can read is refused
    conf = Config.parse(f'[audit]\nhmac_key = "file:{path}"\n', str(tmp_path / "c.conf"))
    with pytest.raises(Exception, match="group/others"):
        hmac_key(conf)
