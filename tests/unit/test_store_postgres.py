"""PostgreSQL-only matters of provider/store/postgres.py against a real server
(scripts/peers/postgres.sh): two connections and two processes on one token, write
serialization, NOTIFY waking the other side's cached head, connection failures, the
schema table, the catalog, and the engine on `[store] kind = "postgres"`.  The
store contract itself runs over this store with the others (tests/unit/stores.py)."""

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from provider import constants as C                              # noqa: E402
from provider.config import Config                               # noqa: E402
from provider.errors import PKCS11Error                          # noqa: E402
from provider.library import Library                             # noqa: E402
from provider.store import postgres as pg                        # noqa: E402
from provider.store.base import Conflict                         # noqa: E402
from provider.store.postgres import PostgresCatalog, PostgresStore  # noqa: E402

from .conftest import RW, SO_PIN, USER_PIN                       # noqa: E402
from .stores import FAST                                         # noqa: E402
from .tmpl import T                                              # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SO, USER = b"so-pin-1", b"user-pin-1"
LABEL = b"pg test".ljust(32)


def rv(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except PKCS11Error as exc:
        return exc.rv
    return C.CKR_OK


def data(label=b"d"):
    return {C.CKA_CLASS: C.CKO_DATA, C.CKA_TOKEN: True, C.CKA_PRIVATE: False, C.CKA_LABEL: label}


@pytest.fixture
def catalog(postgres):
    cat = PostgresCatalog(postgres.dsn, pin_policy=FAST)
    yield cat
    cat.close()


@pytest.fixture
def token(catalog):
    """(name, store) of a fresh initialized token on the shared database."""
    name, store = catalog.new()
    store.initialize(LABEL, SO)
    yield name, store
    store.close()
    catalog.discard(name)


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def settled(store):
    """The store's listener is connected and its head is cached."""
    store.head()
    assert wait_for(lambda: store.db._listening != 0, timeout=10)
    return store.head()


# --- two connections -----------------------------------------------------------------
def test_two_connections_see_each_others_writes_and_conflict(postgres, token):
    name, a = token
    b = PostgresStore(postgres.dsn, name, pin_policy=FAST)      # its own connection
    try:
        assert b.db is not a.db and b.initialized() and b.serial == a.serial
        assert a.save_object("x", data(b"one"), frozenset()) == 1
        cursor, upserts, deleted, full = b.changes(None)
        assert [(u, v, at[C.CKA_LABEL]) for u, v, at in upserts] == [("x", 1, b"one")] and full
        assert b.save_object("x", data(b"two"), frozenset(), expect=1) == 2
        with pytest.raises(Conflict):                               # a's read is stale
            a.save_object("x", data(b"stale"), frozenset(), expect=1)
        with pytest.raises(Conflict):
            a.delete_object("x", 1)
        _, upserts, _, _ = a.changes(None)
        assert [(u, v, at[C.CKA_LABEL]) for u, v, at in upserts] == [("x", 2, b"two")]
        a.delete_object("x", 2)
        cursor, upserts, deleted, full = b.changes(cursor)
        assert upserts == [] and deleted == ["x"] and not full
        for expect in (2, 0):                                       # never resurrected
            with pytest.raises(Conflict):
                b.save_object("x", data(b"again"), frozenset(), expect=expect)
        assert b.changes(cursor).cursor == cursor                   # nothing was written
    finally:
        b.close()


def test_notify_wakes_the_other_sides_cached_head(postgres, token):
    name, a = token
    b = PostgresStore(postgres.dsn, name, pin_policy=FAST)
    try:
        before = settled(b)
        start = time.monotonic()
        a.save_object("n", data(), frozenset())
        assert wait_for(lambda: b.head() != before, timeout=pg.HEAD_TTL / 2), "head did not move"
        assert time.monotonic() - start < pg.HEAD_TTL / 2
        assert b.head() == a.head() == (before[0] + 1, before[1])
        # re-initialization (epoch) wakes it too
        before = settled(b)
        a.initialize(LABEL, SO)
        assert wait_for(lambda: b.head()[1] == before[1] + 1, timeout=pg.HEAD_TTL / 2)
    finally:
        b.close()


def test_head_is_cached_until_notified_or_stale(postgres, token):
    """A change made behind the store's back (no NOTIFY) is not seen while the cached
    head is fresh, and is seen once it is older than HEAD_TTL: the cache is real, and bounded."""
    name, a = token
    before = settled(a)
    with psycopg.connect(postgres.dsn, autocommit=True) as raw:
        raw.execute("UPDATE ferro_tokens SET seq = seq + 1 WHERE name = %s", (name,))
        changed = time.monotonic()
        assert a.head() == before
        assert wait_for(lambda: a.head() != before, timeout=pg.HEAD_TTL * 3)
        assert time.monotonic() - changed <= pg.HEAD_TTL * 2
    before = settled(a)                                # fresh: only a notification moves it now
    with psycopg.connect(postgres.dsn, autocommit=True) as raw:
        raw.execute("UPDATE ferro_tokens SET seq = seq + 1 WHERE name = %s", (name,))
        raw.execute("SELECT pg_notify('ferrohsm', %s)", (name,))
    assert wait_for(lambda: a.head()[0] == before[0] + 1, timeout=pg.HEAD_TTL / 2)


def test_a_conflict_makes_the_next_refresh_read_the_head(postgres, token):
    """Another process's write whose notification has not arrived yet: the stale write's
    Conflict must not leave the cache in the way of the refresh the engine does next."""
    name, a = token
    a.save_object("k", data(), frozenset())
    cursor = a.changes(None).cursor
    settled(a)
    with psycopg.connect(postgres.dsn) as raw, raw.transaction():      # no NOTIFY
        seq = raw.execute("UPDATE ferro_tokens SET seq = seq + 1 WHERE name = %s RETURNING seq",
                          (name,)).fetchone()[0]
        raw.execute("UPDATE ferro_objects SET version = version + 1, seq = %s WHERE token = %s AND uid = 'k'",
                    (seq, name))
    assert a.changes(cursor).upserts == []                 # the cache: not seen yet
    with pytest.raises(Conflict):
        a.save_object("k", data(b"mine"), frozenset(), expect=1)
    assert [(u, v) for u, v, _ in a.changes(cursor).upserts] == [("k", 2)]   # at once
    assert a.save_object("k", data(b"mine"), frozenset(), expect=2) == 3


def test_own_writes_move_own_head_at_once(token):
    _, a = token
    for i in range(20):
        seq = settled(a)[0]
        a.save_object(f"o{i}", data(), frozenset())
        assert a.head()[0] == seq + 1                  # no waiting for the notification


def test_writers_of_one_token_take_turns(postgres, token):
    name, a = token
    b = PostgresStore(postgres.dsn, name, pin_policy=FAST)
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    errors = []

    def hold():
        try:
            with b.transaction():
                b.save_object("held", data(), frozenset())
                inside.set()
                release.wait(10)
        except BaseException as exc:       # noqa: BLE001 - reported below
            errors.append(exc)

    def write():
        a.save_object("waits", data(), frozenset())
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(5)
        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.3), "a write went through while another held the token"
        release.set()
        assert done.wait(5)
        writer.join()
        holder.join()
        assert not errors
        assert {u for u, _, _ in a.changes(None).upserts} == {"held", "waits"}
    finally:
        release.set()
        holder.join()
        b.close()


def test_transaction_rolls_back_whole_and_nests(postgres, token):
    name, a = token
    b = PostgresStore(postgres.dsn, name, pin_policy=FAST)
    try:
        head = a.head()
        with pytest.raises(RuntimeError):
            with a.transaction():
                a.save_object("t1", data(), frozenset())
                with a.transaction():                       # joins the outer one
                    a.save_object("t2", data(), frozenset())
                assert {u for u, _, _ in a.changes(None).upserts} == {"t1", "t2"}  # own, uncommitted
                raise RuntimeError("abort")
        assert a.head() == head and b.head() == head
        assert b.changes(None).upserts == [] and a.changes(None).upserts == []
        with a.transaction():
            a.save_object("t1", data(b"first"), frozenset())
            with pytest.raises(Conflict):
                with a.transaction():                       # sees the outer one's write
                    a.save_object("t1", data(b"second"), frozenset())   # expect 0: exists
        assert [(u, v, at[C.CKA_LABEL]) for u, v, at in b.changes(None).upserts] == [("t1", 1, b"first")]
    finally:
        b.close()


def test_index_lists_entries_without_records_and_load_reads_one(postgres, token):
    name, a = token
    a.login(C.CKU_SO, SO)
    a.init_pin(USER)
    a.logout()
    a.login(C.CKU_USER, USER)
    key = {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_TOKEN: True, C.CKA_PRIVATE: True,
           C.CKA_LABEL: b"idx", C.CKA_ID: b"\x01", C.CKA_VALUE: b"k" * 32}
    a.save_object("key", key, frozenset({C.CKA_VALUE}))
    a.save_object("pub", data(b"public"), frozenset())
    b = PostgresStore(postgres.dsn, name, pin_policy=FAST)
    try:
        cursor, entries = b.index()
        assert cursor == a.head()[0]
        got = {uid: (version, stub, attrs) for uid, version, stub, attrs in entries}
        assert set(got) == {"key", "pub"} and all(attrs is None for _, _, attrs in got.values())
        version, stub, _ = got["key"]                # private: label and ID as keyed hashes
        assert version == 1 and stub[C.CKA_CLASS] == C.CKO_SECRET_KEY
        assert stub[C.CKA_LABEL] == a.blind(C.CKA_LABEL, b"idx") and stub[C.CKA_ID] == a.blind(C.CKA_ID, b"\x01")
        assert stub[C.CKA_KEY_TYPE] == C.CKK_AES and stub[C.CKA_PRIVATE]
        b.login(C.CKU_USER, USER)
        assert got["pub"][1][C.CKA_LABEL] == b"public" and not got["pub"][1][C.CKA_PRIVATE]
        version, attrs = b.load("key")
        assert version == 1 and attrs[C.CKA_LABEL] == b"idx" and C.CKA_VALUE in attrs
        assert b.load("missing") is None
        # a row without an index entry (cls NULL) is listed from its record
        with psycopg.connect(postgres.dsn, autocommit=True) as raw:
            raw.execute("UPDATE ferro_objects SET cls = NULL WHERE token = %s AND uid = 'pub'", (name,))
        got = {uid: (stub, attrs) for uid, _, stub, attrs in b.index()[1]}
        assert got["pub"][0][C.CKA_LABEL] == b"public" and got["pub"][1][C.CKA_LABEL] == b"public"
        assert b.changes(cursor).upserts == []          # the index's cursor continues the feed
    finally:
        b.close()


# --- processes ------------------------------------------------------------------------
WORKER = r"""
import sys
from provider import constants as C
from provider.store.base import Conflict
from provider.store.postgres import PostgresStore
from provider.store.sealing import Argon2id, PinPolicy
dsn, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = PostgresStore(dsn, name, pin_policy=PinPolicy(Argon2id(64, 1, 1), 0.0))
conflicts, ivs = 0, []
for _ in range(rounds):
    while True:
        _, ups, _, _ = s.changes(None)
        (uid, version, attrs), = ups
        n = int(attrs[C.CKA_LABEL])
        try:
            s.save_object(uid, {**attrs, C.CKA_LABEL: b"%d" % (n + 1)}, frozenset(), expect=version)
            break
        except Conflict:
            conflicts += 1
    ivs.append(s.reserve_counter(uid, 3))
s.close()
print(conflicts, *ivs)
"""


def test_two_processes_increment_one_object_without_losing_a_write(postgres, token):
    name, a = token
    a.save_object("ctr", data(b"0"), frozenset())
    rounds, env = 40, dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres.dsn, name, str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    (uid, version, attrs), = a.changes(None).upserts
    assert attrs[C.CKA_LABEL] == b"%d" % (2 * rounds) and version == 1 + 2 * rounds
    ivs = [int(v) for out, _ in outs for v in out.split()[1:]]
    assert len(ivs) == 2 * rounds and sorted(ivs) == list(range(0, 6 * rounds, 3))  # never twice


def _child_writes(store, queue):
    try:
        store.save_object("from-child", data(), frozenset())
        queue.put(("ok", store.head()))
    except BaseException as exc:     # noqa: BLE001 - sent to the parent
        queue.put(("error", repr(exc)))


def test_store_used_across_fork_connects_again(postgres, token):
    """The child must not use (or, dropping it, end) the parent's connection."""
    name, a = token
    a.save_object("before", data(), frozenset())
    parent_pid = a.db.run("SELECT pg_backend_pid()").fetchone()[0]
    settled(a)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_writes, args=(a, queue))
    child.start()
    status, value = queue.get(timeout=30)
    child.join(30)
    assert status == "ok", value
    assert wait_for(lambda: a.head() == value, timeout=pg.HEAD_TTL / 2)   # its NOTIFY woke us
    assert a.db.run("SELECT pg_backend_pid()").fetchone()[0] == parent_pid   # still our session
    assert {u for u, _, _ in a.changes(None).upserts} == {"before", "from-child"}


# --- failures ------------------------------------------------------------------------
def test_no_server_is_device_error_logged_once(caplog):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                # nothing listens there
    dsn = f"host=127.0.0.1 port={port} dbname=ferrohsm user=ferrohsm password=not-logged"
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        assert cat.names() == []                             # no token present
        name, store = cat.new()
        for call in (store.initialized, lambda: store.initialize(LABEL, SO), store.head):
            with pytest.raises(PKCS11Error) as info:
                call()
            assert info.value.rv == C.CKR_DEVICE_ERROR and "cannot connect" in info.value.reason
        assert cat.names() == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"127.0.0.1:{port}/ferrohsm" in errors[0].getMessage()
    assert "not-logged" not in caplog.text
    cat.close()


def test_missing_database_is_device_error(postgres, caplog):
    cat = PostgresCatalog(postgres.dsn.replace("dbname=ferrohsm", "dbname=ferro_absent"), pin_policy=FAST)
    with caplog.at_level(logging.ERROR, logger="ferrohsm"):
        assert cat.names() == []
        _, store = cat.new()
        with pytest.raises(PKCS11Error) as info:
            store.initialize(LABEL, SO)
    assert info.value.rv == C.CKR_DEVICE_ERROR and "ferro_absent" in info.value.reason
    assert len(caplog.records) == 1
    cat.close()


def test_library_without_server_has_no_token_and_says_device_error(tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lib = _library(tmp_path, f"host=127.0.0.1 port={port} dbname=ferrohsm user=ferrohsm")
    try:
        assert lib.get_slot_list(True) == [lib.free_slot]          # the free slot only
        assert not lib.get_token_info(lib.free_slot)["flags"] & C.CKF_TOKEN_INITIALIZED
        assert rv(lib.init_token, lib.free_slot, SO_PIN, b"x".ljust(32)) == C.CKR_DEVICE_ERROR
    finally:
        lib.finalize()


def _terminate(dsn, store):
    backend = store.db.run("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as raw:
        assert raw.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0]
    return backend


def test_connection_lost_between_transactions_is_opened_again(postgres, token, caplog):
    name, a = token
    a.save_object("x", data(), frozenset())
    old = _terminate(postgres.dsn, a)
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        assert a.save_object("y", data(), frozenset()) == 1        # on a new connection
    assert a.db.run("SELECT pg_backend_pid()").fetchone()[0] != old
    assert "connection lost" in caplog.text
    _terminate(postgres.dsn, a)
    assert {u for u, _, _ in a.changes(None).upserts} == {"x", "y"}   # a read: the same


def test_connection_lost_in_a_transaction_is_device_error_and_commits_nothing(postgres, token, caplog):
    name, a = token
    head = a.head()
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        with pytest.raises(PKCS11Error) as info:
            with a.transaction():
                a.save_object("first", data(), frozenset())
                _terminate(postgres.dsn, a)
                a.save_object("second", data(), frozenset())
        assert info.value.rv == C.CKR_DEVICE_ERROR and "query failed" in info.value.reason
        assert a.head() == head and a.changes(None).upserts == []      # connected again: nothing
        a.save_object("after", data(), frozenset())
    assert "working again" in caplog.text
    assert [u for u, _, _ in a.changes(None).upserts] == ["after"]


def test_server_restart_device_error_then_listener_and_cache_come_back(postgres_private, caplog):
    server = postgres_private
    cat = PostgresCatalog(server.dsn, pin_policy=FAST)
    name, a = cat.new()
    a.initialize(LABEL, SO)
    b = PostgresStore(server.dsn, name, pin_policy=FAST)
    try:
        settled(b)
        with caplog.at_level(logging.WARNING, logger="ferrohsm"):
            server.stop()
            assert wait_for(lambda: b.db._listening == 0)       # the cache is off at once
            assert rv(b.head) == C.CKR_DEVICE_ERROR
            assert rv(a.save_object, "x", data(), frozenset()) == C.CKR_DEVICE_ERROR
            dsn = server.dsn
            server.start()
            assert server.dsn == dsn                               # the same port again
            before = settled(b)                                    # connected, listening again
            a.save_object("x", data(), frozenset())
            assert wait_for(lambda: b.head()[0] == before[0] + 1, timeout=pg.HEAD_TTL / 2)
        assert "working again" in caplog.text
    finally:
        b.close()
        cat.close()


def test_newer_schema_refused(postgres, caplog):
    dsn = postgres.database()
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("CREATE TABLE ferro_schema (version integer NOT NULL)")
        raw.execute("INSERT INTO ferro_schema VALUES (%s)", (pg.SCHEMA_VERSION + 1,))
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    with caplog.at_level(logging.ERROR, logger="ferrohsm"):
        assert cat.names() == [] and cat.names() == []
        _, store = cat.new()
        assert rv(store.initialize, LABEL, SO) == C.CKR_TOKEN_NOT_RECOGNIZED
    assert caplog.text.count("newer than this release") == 1
    cat.close()


def test_older_schema_upgraded_in_place(postgres, monkeypatch):
    """A database at an older schema is brought to SCHEMA_VERSION by MIGRATIONS, once."""
    dsn = postgres.database()
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    name, store = cat.new()
    store.initialize(LABEL, SO)
    store.save_object("kept", data(), frozenset())
    cat.close()
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("UPDATE ferro_schema SET version = %s", (pg.SCHEMA_VERSION - 1,))
    monkeypatch.setitem(pg.MIGRATIONS, pg.SCHEMA_VERSION - 1,
                        "ALTER TABLE ferro_tokens ADD COLUMN upgraded boolean NOT NULL DEFAULT true")
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    assert cat.names() == [name]
    assert {u for u, _, _ in cat.open(name).changes(None).upserts} == {"kept"}
    with psycopg.connect(dsn, autocommit=True) as raw:
        assert raw.execute("SELECT version FROM ferro_schema").fetchall() == [(pg.SCHEMA_VERSION,)]
        assert raw.execute("SELECT upgraded FROM ferro_tokens").fetchall() == [(True,)]
    cat.close()


# --- the catalog -----------------------------------------------------------------------
def test_catalog_lists_in_creation_order_and_discards(postgres):
    dsn = postgres.database()
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    assert cat.names() == []
    first, s1 = cat.new()
    second, s2 = cat.new()
    assert first != second and first.startswith("token-")
    s2.initialize(LABEL, SO)
    assert cat.names() == [second]                   # a token exists once initialized
    s1.initialize(LABEL, SO)
    assert cat.names() == [second, first]            # in the order they were made
    s1.save_object("o", data(), frozenset())
    s1.reserve_counter("o", 1)
    other = PostgresCatalog(dsn, pin_policy=FAST)
    assert other.names() == [second, first] and other.open(first).serial == s1.serial
    cat.discard(first)
    assert other.names() == [second]
    with psycopg.connect(dsn, autocommit=True) as raw:
        for table in ("ferro_objects", "ferro_tombstones", "ferro_counters"):
            assert raw.execute(f"SELECT count(*) FROM {table} WHERE token = %s", (first,)).fetchone() == (0,)
    for c in (cat, other):
        c.close()


# --- the engine ---------------------------------------------------------------------------
def _library(tmp_path, dsn) -> Library:
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{tmp_path / "unused"}"\n[log]\nlevel = "ERROR"\n'
                    f'[store]\nkind = "postgres"\ndsn = "{dsn}"\n')
    return Library(Config.parse(conf.read_text(), str(conf)))


def test_library_on_postgres(postgres, tmp_path):
    dsn = postgres.database()
    lib = _library(tmp_path, dsn)
    try:
        slot = lib.free_slot
        lib.init_token(slot, SO_PIN, b"pg token".ljust(32))
        s = lib.open_session(slot, RW)
        lib.login(s, C.CKU_SO, SO_PIN)
        lib.init_pin(s, USER_PIN)
        lib.logout(s)
        lib.login(s, C.CKU_USER, USER_PIN)
        key = T(CLASS=C.CKO_SECRET_KEY, KEY_TYPE=C.CKK_AES, VALUE=bytes(range(32)), LABEL=b"pg-aes",
                TOKEN=True, PRIVATE=True)
        h = lib.create_object(s, key)

        def find(library, session, label):
            library.find_objects_init(session, T(LABEL=label))
            try:
                return library.find_objects(session, 100)
            finally:
                library.find_objects_final(session)

        assert find(lib, s, b"pg-aes") == [h]
        # a second Library (another process would be the same) finds the token and the key
        lib2 = _library(tmp_path, dsn)
        try:
            slots = lib2.get_slot_list(True)
            (slot2,) = [x for x in slots if lib2.get_token_info(x)["label"] == b"pg token".ljust(32)]
            s2 = lib2.open_session(slot2, RW)
            lib2.login(s2, C.CKU_USER, USER_PIN)
            (h2,) = find(lib2, s2, b"pg-aes")
            lib2.destroy_object(s2, h2)
            assert find(lib2, s2, b"pg-aes") == []
        finally:
            lib2.finalize()
        assert find(lib, s, b"pg-aes") == []               # the destroy is seen here too
        with psycopg.connect(dsn, autocommit=True) as raw:
            assert raw.execute("SELECT count(*) FROM ferro_objects").fetchone() == (0,)
            assert raw.execute("SELECT count(*) FROM ferro_tombstones").fetchone()[0] >= 1
    finally:
        lib.finalize()


def test_schema_2_database_gains_the_pin_columns_and_wraps_are_replaced_at_login(postgres):
    """A database of schema 2 (the previous release: PBKDF2 wraps, no KDF or tries columns)
    is brought to schema 3 when opened; the user's login wraps the user PIN again with Argon2id."""
    from .test_store import legacy_wrap
    dsn = postgres.database()
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    name, store = cat.new()
    store.initialize(LABEL, SO)
    store.login(C.CKU_SO, SO)
    store.init_pin(USER)
    store.logout()
    legacy_wrap(store, "user", USER)
    cat.close()
    with psycopg.connect(dsn, autocommit=True) as raw:
        raw.execute("ALTER TABLE ferro_tokens DROP COLUMN so_kdf, DROP COLUMN so_tries, "
                    "DROP COLUMN user_kdf, DROP COLUMN user_tries, DROP COLUMN manifest, DROP COLUMN anchor")
        raw.execute("DROP TABLE ferro_audit_records, ferro_audit_checkpoints")     # (schema 5's)
        raw.execute("UPDATE ferro_schema SET version = 2")
    cat = PostgresCatalog(dsn, pin_policy=FAST)
    cat.open(name).login(C.CKU_USER, USER)
    with psycopg.connect(dsn, autocommit=True) as raw:
        assert raw.execute("SELECT version FROM ferro_schema").fetchall() == [(pg.SCHEMA_VERSION,)]
        assert raw.execute("SELECT user_kdf, user_iters, so_kdf FROM ferro_tokens").fetchall() == [
            (FAST.kdf.text(), None, None)]
    cat.close()
