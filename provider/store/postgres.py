"""Every token in one PostgreSQL database, shared by every process on every machine
that connects to it: `[store] kind = "postgres"`, `dsn = "<libpq connection string>"`.

Tables (created on first use; `ferro_schema.version` is sealing.SCHEMA_VERSION, and an
older database is brought to it in place, see MIGRATIONS; a newer one is refused):
  ferro_tokens      one row per token: name, created (the server's clock, ns: the
                    catalog's order), and
                    sealing.TOKEN_FIELDS (label, serial, epoch, seq, pruned, keys, PINs)
  ferro_objects     (token, uid): version, lineage, seq of its last write, record, tag,
                    and the index entry (base.STUB: cls, label, cka_id, key_type, private;
                    cls NULL: none, the record is then read to list the object)
  ferro_tombstones  (token, uid): seq of its deletion
  ferro_counters    (token, name): next value of an IV counter
  ferro_audit_records, ferro_audit_checkpoints   (token, seq): digest, data - the audit
                    log (schema 5, base.TokenStore.audit_*), written in the change's transaction
The object tables reference ferro_tokens with ON DELETE CASCADE: a token's rows go with it.

Transactions.  Each process keeps one connection per catalog (a PostgresStore opened on
a DSN alone has its own), in psycopg's autocommit mode with explicit BEGIN/COMMIT, and a
lock held for a whole transaction so that threads take turns on it.  A write transaction
(sealing's `_write`) starts with `SELECT ... FROM ferro_tokens WHERE name = ... FOR
UPDATE`: writers of one token, in any process, run one after the other, so the version
a compare-and-set checks cannot change before its commit.  `_write` nested inside
another joins it; an exception rolls the whole transaction back.  `_since` reads in one
REPEATABLE READ READ ONLY transaction: one snapshot.  A lock wait longer than
LOCK_TIMEOUT_MS (10 s), a connection lost in a transaction or an unreachable server is
CKR_DEVICE_ERROR with a reason (logged once until the store works again; the transaction
is not committed); between transactions a lost connection is opened again at once.

The cheap head check (LISTEN/NOTIFY).  head() is asked before every object use, and a
query is a network round trip, so each process caches (seq, epoch) per token:
  - every write transaction that changed something runs `pg_notify('ferrohsm', <token
    name>)`, which PostgreSQL delivers when (and only if) the transaction commits;
  - one listener connection per catalog, in a daemon thread, LISTENs on `ferrohsm`
    and bumps the token's generation for each notification;
  - head() answers from the cache while the entry is less than HEAD_TTL (1 s) old, the
    token's generation is the one read before the query that filled it, and the
    listener has stayed connected since (a reconnected listener may have missed
    notifications: the old entries are not used); otherwise it queries;
  - this process's own commits bump the generation at once, so it never reads its own
    writes stale (the listener skips the notifications of this process's connection);
  - so does a write transaction that fails (a Conflict above all: the writer's view is
    behind), so the refresh that follows a Conflict reads the head, never the cache.
So a write anywhere is seen by head() as soon as its notification arrives, and at most
HEAD_TTL later if one were lost; a clean head() is a dictionary look-up.

Fork: a connection must not cross a fork.  In the child the inherited sockets are
pointed at /dev/null (so that dropping them sends nothing on the parent's sessions),
the locks and the cache are new, and the next call connects afresh.
"""

import os
import threading
import time
import weakref
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .. import constants as C
from ..errors import PKCS11Error
from ..log import LOG
from .base import Catalog, Entry
from .sealing import SCHEMA_VERSION, TOKEN_FIELDS, PinPolicy, SealingStore

CHANNEL = "ferrohsm"
HEAD_TTL = 1.0           # s: a cached head older than this is read again
LISTEN_POLL = 0.5        # s: how often the listener thread looks whether it should stop
CONNECT_TIMEOUT = 5      # s
LOCK_TIMEOUT_MS = 10_000  # a writer waits this long for another's transaction on the token
SCHEMA_LOCK = 0x4665_7272_6f48_534d   # pg_advisory_xact_lock key while creating / upgrading
SCHEMA = """
CREATE TABLE ferro_tokens (
    name text PRIMARY KEY, created bigint NOT NULL,
    label bytea NOT NULL, serial text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,
    pruned bigint NOT NULL DEFAULT 0, pub_key bytea NOT NULL,
    so_salt bytea, so_iters integer, so_wrap bytea, so_fail integer NOT NULL,
    user_salt bytea, user_iters integer, user_wrap bytea, user_fail integer NOT NULL,
    so_kdf text, so_tries bytea, user_kdf text, user_tries bytea, manifest bytea, anchor bytea);
CREATE TABLE ferro_objects (
    token text NOT NULL REFERENCES ferro_tokens (name) ON DELETE CASCADE,
    uid text NOT NULL, version bigint NOT NULL, lineage text NOT NULL, seq bigint NOT NULL,
    record bytea NOT NULL, tag bytea NOT NULL,
    cls bigint, label bytea, cka_id bytea, key_type bigint, private boolean,
    PRIMARY KEY (token, uid));
CREATE INDEX ferro_objects_seq ON ferro_objects (token, seq);
CREATE TABLE ferro_tombstones (
    token text NOT NULL REFERENCES ferro_tokens (name) ON DELETE CASCADE,
    uid text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (token, uid));
CREATE INDEX ferro_tombstones_seq ON ferro_tombstones (token, seq);
CREATE TABLE ferro_counters (
    token text NOT NULL REFERENCES ferro_tokens (name) ON DELETE CASCADE,
    name text NOT NULL, next bigint NOT NULL, PRIMARY KEY (token, name));
"""
# the audit log (schema 5): in a new database's schema and in the step from 4
AUDIT_TABLES = """
CREATE TABLE ferro_audit_records (
    token text NOT NULL REFERENCES ferro_tokens (name) ON DELETE CASCADE,
    seq bigint NOT NULL, digest bytea NOT NULL, data bytea NOT NULL, PRIMARY KEY (token, seq));
CREATE TABLE ferro_audit_checkpoints (
    token text NOT NULL REFERENCES ferro_tokens (name) ON DELETE CASCADE,
    seq bigint NOT NULL, digest bytea NOT NULL, data bytea NOT NULL, PRIMARY KEY (token, seq));
"""
# schema version -> the statements that bring a database at that version to the next.
# The PostgreSQL store began at schema 2; a later schema adds its step here.
MIGRATIONS: dict[int, str] = {
    2: """
ALTER TABLE ferro_tokens ADD COLUMN so_kdf text, ADD COLUMN so_tries bytea,
    ADD COLUMN user_kdf text, ADD COLUMN user_tries bytea, ADD COLUMN manifest bytea;
""",
    3: "ALTER TABLE ferro_tokens ADD COLUMN anchor bytea",
    4: AUDIT_TABLES,
}
_NOW_NS = "(extract(epoch FROM clock_timestamp()) * 1e9)::bigint"   # the server's clock: one for every client
_SELECT_TOKEN = f"SELECT {', '.join(TOKEN_FIELDS)} FROM ferro_tokens WHERE name = %s"
_DATABASES: "weakref.WeakSet[Database]" = weakref.WeakSet()
_FORKED: list = []   # connections inherited across a fork: never used, kept from the collector


def _statements(sql: str) -> list:
    return [s for s in sql.split(";") if s.strip()]


def _where(dsn: str) -> str:
    """host:port/dbname of a DSN, for messages (never its password)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL"
    return f"postgres {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _after_fork() -> None:
    for db in list(_DATABASES):
        db._forked()


os.register_at_fork(after_in_child=_after_fork)


class Database:
    """One process's connection to the store's database, the lock its transactions hold,
    and the head cache with its listener thread (see the module docstring)."""

    def __init__(self, dsn: str, head_ttl: float = HEAD_TTL):
        self.dsn = dsn
        self.head_ttl = head_ttl        # 0: no head cache, every head() is a query
        self.where = _where(dsn)
        self._reset()
        _DATABASES.add(self)

    def _reset(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0                  # nesting of the open transaction (under self.lock)
        self.touched: set = set()      # tokens the open write transaction locked / changed
        self.changed: set = set()
        self._conn: psycopg.Connection | None = None
        self._backend_pid = 0           # the server process of self._conn (its own notifications)
        self._schema_ok = False
        self._failing = False           # an error was logged; the next success says so
        self._cache_lock = threading.Lock()
        self._heads: dict = {}          # name -> (seq, epoch, generation, listener, monotonic time)
        self._gen: dict = {}            # name -> generation (notifications seen + own commits)
        self._listening = 0             # the listener's connection number; 0: not listening
        self._listens = 0
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection | None = None
        self._stop = threading.Event()

    def _forked(self) -> None:
        for conn in (self._conn, self._listen_conn):
            if conn is not None:
                try:
                    devnull = os.open(os.devnull, os.O_RDWR)
                    os.dup2(devnull, conn.pgconn.socket)
                    os.close(devnull)
                except (OSError, psycopg.Error):
                    pass
                _FORKED.append(conn)
        self._reset()

    # errors -----------------------------------------------------------------------
    def failure(self, what: str, exc: BaseException) -> PKCS11Error:
        """CKR_DEVICE_ERROR for a psycopg error, logged once until things work again."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if not self._failing:
            self._failing = True
            LOG.error("%s: %s: %s", self.where, what, reason)
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._conn = None
        return PKCS11Error(C.CKR_DEVICE_ERROR, f"{self.where}: {what}: {reason}")

    def _working(self) -> None:
        if self._failing:
            self._failing = False
            LOG.warning("%s: working again", self.where)

    # the connection ------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="ferrohsm")
            conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        except psycopg.Error as exc:
            raise self.failure("cannot connect", exc) from None
        return conn

    def conn(self) -> psycopg.Connection:
        """The connection (call with self.lock held), opened and its schema checked if need be."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if self.depth:
                raise PKCS11Error(C.CKR_DEVICE_ERROR, f"{self.where}: connection lost in a transaction")
            self._conn = conn = self._connect()
            self._backend_pid = conn.info.backend_pid
        if not self._schema_ok:
            try:
                self._schema(conn)
            except BaseException as exc:
                error = self.failure("cannot set up the tables", exc) if isinstance(exc, psycopg.Error) else exc
                self._conn = None
                conn.close()
                raise error from None
            self._schema_ok = True
        return conn

    def _schema(self, conn) -> None:
        """Create the tables, or bring older ones to SCHEMA_VERSION, in one transaction
        that no other process runs at the same time; a newer schema is refused."""
        def version():
            if conn.execute("SELECT to_regclass('ferro_schema') IS NULL").fetchone()[0]:
                return None
            row = conn.execute("SELECT max(version) FROM ferro_schema").fetchone()
            return row[0]

        if version() == SCHEMA_VERSION:        # the usual case: nothing to take a lock for
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            found = version()
            if found is None:
                conn.execute("CREATE TABLE IF NOT EXISTS ferro_schema (version integer NOT NULL)")
                for statement in _statements(SCHEMA + AUDIT_TABLES):
                    conn.execute(statement)
                conn.execute("INSERT INTO ferro_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                LOG.info("%s: tables created (schema %d)", self.where, SCHEMA_VERSION)
                return
            if found > SCHEMA_VERSION:
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED,
                                  f"{self.where}: store schema {found} is newer than this release's")
            start = found
            while found < SCHEMA_VERSION:
                for statement in _statements(MIGRATIONS[found]):
                    conn.execute(statement)
                found += 1
            conn.execute("UPDATE ferro_schema SET version = %s", (SCHEMA_VERSION,))
            LOG.info("%s: tables upgraded from schema %d to %d", self.where, start, SCHEMA_VERSION)

    def run(self, sql: str, params=()):
        """Execute one statement (in the open transaction, or as its own); the cursor.
        Outside a transaction (a read, or the BEGIN of one) a connection found lost is
        opened again and the statement tried once more: nothing was done on the old one."""
        with self.lock:
            for retry in (True, False):
                conn = self.conn()
                try:
                    cur = conn.execute(sql, params)
                except psycopg.Error as exc:
                    if retry and not self.depth and (conn.broken or conn.closed):
                        LOG.warning("%s: connection lost (%s); connecting again", self.where,
                                    " ".join(str(exc).split()))
                        self._conn = None
                        continue
                    raise self.failure("query failed", exc) from None
                self._working()
                return cur

    @contextmanager
    def transaction(self, begin: str, name: str | None = None):
        """A transaction on the connection (nested: joins the open one). With `name`, a
        write transaction: the token's row is locked first; a commit notifies."""
        with self.lock:
            if self.depth:
                self.depth += 1
                try:
                    if name is not None and name not in self.touched:
                        self.touched.add(name)
                        self.run("SELECT 1 FROM ferro_tokens WHERE name = %s FOR UPDATE", (name,))
                    yield
                finally:
                    self.depth -= 1
                return
            self.run(begin)
            self.depth = 1
            committed = False
            try:
                if name is not None:
                    self.touched.add(name)
                    self.run("SELECT 1 FROM ferro_tokens WHERE name = %s FOR UPDATE", (name,))
                yield
                for token in sorted(self.changed):
                    self.run("SELECT pg_notify(%s, %s)", (CHANNEL, token))
                self.run("COMMIT")
                committed = True
            finally:
                self.depth = 0
                stale = self.changed if committed else self.changed | self.touched
                self.changed, self.touched = set(), set()
                if not committed:
                    self._rollback()
                for token in stale:
                    self.invalidate(token)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = None
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self._conn = None
            conn.close()

    def close(self) -> None:
        """Close the connection; the listener thread ends within LISTEN_POLL."""
        self._stop.set()
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            self._schema_ok = False

    # the head cache -----------------------------------------------------------------------
    def invalidate(self, name: str) -> None:
        with self._cache_lock:
            self._gen[name] = self._gen.get(name, 0) + 1

    def head(self, name: str) -> tuple:
        now = time.monotonic()
        with self._cache_lock:
            gen, listening = self._gen.get(name, 0), self._listening
            entry = self._heads.get(name)
            if (entry is not None and listening and entry[2] == gen and entry[3] == listening
                    and now - entry[4] < self.head_ttl):
                return entry[0], entry[1]
        if self.head_ttl > 0:
            self._ensure_listener()
        with self.lock:
            row = self.run("SELECT seq, epoch FROM ferro_tokens WHERE name = %s", (name,)).fetchone()
            if row is None:
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
            if not self.depth and self.head_ttl > 0:   # (a transaction may hold uncommitted writes)
                with self._cache_lock:
                    self._heads[name] = (row[0], row[1], gen, listening, now)
        return row[0], row[1]

    def _ensure_listener(self) -> None:
        if self._listener is None or not self._listener.is_alive():
            with self._cache_lock:
                if self._listener is not None and self._listener.is_alive():
                    return
                self._stop = threading.Event()
                self._listener = threading.Thread(target=_listen, args=(weakref.ref(self), self._stop),
                                                  name="ferrohsm-pg-listener", daemon=True)
                self._listener.start()

    def _listening_on(self, conn) -> None:
        with self._cache_lock:
            self._listen_conn = conn
            self._listens += 1
            self._listening = self._listens

    def _listening_off(self) -> None:
        with self._cache_lock:
            self._listening = 0
            self._listen_conn = None

    def _notified(self, note) -> None:
        if note.pid != self._backend_pid:     # our own commits were invalidated when they committed
            with self._cache_lock:
                self._gen[note.payload] = self._gen.get(note.payload, 0) + 1

    def __del__(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:        # noqa: BLE001 - nothing to tell at collection
                pass


def _listen(ref, stop: threading.Event) -> None:
    """The listener thread.  It holds its Database by weak reference only, so a
    Database that nobody closed is still collected, and the thread ends with it."""
    backoff = 0.1
    while not stop.is_set():
        db = ref()
        if db is None:
            return
        dsn = db.dsn
        del db
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="ferrohsm-listener")
        except psycopg.Error:
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            db = ref()
            if db is None:
                return
            db._listening_on(conn)
            del db
            backoff = 0.1
            while not stop.is_set():
                for note in conn.notifies(timeout=LISTEN_POLL):
                    db = ref()
                    if db is None:
                        return
                    db._notified(note)
                    del db
                if ref() is None:
                    return
        except psycopg.Error:
            pass
        finally:
            db = ref()
            if db is not None:
                db._listening_off()
            del db
            try:
                conn.close()
            except psycopg.Error:
                pass


class PostgresStore(SealingStore):
    """One token's rows.  `database`: the catalog's shared Database, or a DSN (the store
    then has a connection of its own, closed with it).  `head_ttl` (own connection only):
    how long a cached head may be served, 0 for none (every head() a query)."""

    def __init__(self, database, name: str, max_pin_failures: int = 10,
                 pin_policy: PinPolicy = PinPolicy(), head_ttl: float = HEAD_TTL):
        super().__init__(max_pin_failures, pin_policy)
        self._own = isinstance(database, str)
        self.db = Database(database, head_ttl) if self._own else database
        self.name = name
        self._seen = False       # a token once seen initialized stays so

    def close(self) -> None:
        with self._lock:
            super().close()
            if self._own:
                self.db.close()

    def _write(self):
        return self.db.transaction("BEGIN", self.name)

    def _read(self):
        return self.db.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _run(self, sql: str, *params):
        return self.db.run(sql, (self.name, *params))

    def _changed(self) -> None:
        self.db.changed.add(self.name)

    # primitives -------------------------------------------------------------------------
    def _exists(self) -> bool:
        with self._lock:
            if not self._seen:
                self._seen = self._run("SELECT 1 FROM ferro_tokens WHERE name = %s").fetchone() is not None
            return self._seen

    def _create(self, fields: dict) -> None:
        with self._lock, self._write():
            names = ", ".join(fields)
            row = self._run(f"INSERT INTO ferro_tokens (name, created, {names}) VALUES (%s, {_NOW_NS}, "
                            f"{', '.join(['%s'] * len(fields))}) ON CONFLICT (name) DO NOTHING RETURNING name",
                            *fields.values()).fetchone()
            if row is None:
                raise PKCS11Error(C.CKR_DEVICE_ERROR, "token initialized meanwhile by another process")
            self._changed()
            self._seen = True

    def _token(self) -> dict:
        row = self._run(_SELECT_TOKEN).fetchone()
        if row is None:
            raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
        return dict(zip(TOKEN_FIELDS, row))

    def _update(self, fields: dict) -> None:
        unknown = set(fields) - set(TOKEN_FIELDS)
        assert not unknown, unknown
        self.db.run(f"UPDATE ferro_tokens SET {', '.join(f + ' = %s' for f in fields)} WHERE name = %s",
                    (*fields.values(), self.name))
        self._changed()

    def _next_seq(self) -> int:
        self._changed()
        return self._run("UPDATE ferro_tokens SET seq = seq + 1 WHERE name = %s RETURNING seq").fetchone()[0]

    def _row(self, uid: str) -> tuple | None:
        return self._run("SELECT version, lineage FROM ferro_objects WHERE token = %s AND uid = %s",
                         uid).fetchone()

    def _tombstoned(self, uid: str) -> bool:
        return self._run("SELECT 1 FROM ferro_tombstones WHERE token = %s AND uid = %s",
                         uid).fetchone() is not None

    def _put(self, uid: str, version: int, record: bytes, tag: bytes, lineage: str) -> None:
        self._run("INSERT INTO ferro_objects (token, uid, version, lineage, seq, record, tag) "
                  "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (token, uid) DO UPDATE SET "
                  "version = excluded.version, lineage = excluded.lineage, seq = excluded.seq, "
                  "record = excluded.record, tag = excluded.tag",
                  uid, version, lineage, self._next_seq(), record, tag)

    def _delete(self, uid: str) -> None:
        self._run("DELETE FROM ferro_objects WHERE token = %s AND uid = %s", uid)
        self._run("INSERT INTO ferro_tombstones (token, uid, seq) VALUES (%s, %s, %s) "
                  "ON CONFLICT (token, uid) DO UPDATE SET seq = excluded.seq", uid, self._next_seq())

    def _get(self, uid: str) -> tuple | None:
        return self._run("SELECT version, record, tag FROM ferro_objects WHERE token = %s AND uid = %s",
                         uid).fetchone()

    def _put_index(self, uid: str, stub: dict) -> None:
        self.db.run("UPDATE ferro_objects SET cls = %s, label = %s, cka_id = %s, key_type = %s, private = %s "
                    "WHERE token = %s AND uid = %s",
                    (stub[C.CKA_CLASS], stub.get(C.CKA_LABEL), stub.get(C.CKA_ID), stub.get(C.CKA_KEY_TYPE),
                     bool(stub.get(C.CKA_PRIVATE)), self.name, uid))

    def _index_rows(self) -> tuple:
        with self._read():
            tok = self._token()
            rows = self._run("SELECT uid, version, cls, label, cka_id, key_type, private FROM ferro_objects "
                             "WHERE token = %s").fetchall()
        return tok, [(uid, version, None if cls is None else Entry(cls, label, cka_id, key_type, private), None)
                     for uid, version, cls, label, cka_id, key_type, private in rows]

    def _private_rows(self) -> tuple:
        with self._read():
            tok = self._token()
            private = self._run("SELECT uid, version FROM ferro_objects WHERE token = %s AND cls IS NOT NULL "
                                "AND private").fetchall()
            unlisted = [uid for (uid,) in self._run("SELECT uid FROM ferro_objects WHERE token = %s AND cls IS NULL")]
        return tok, private, unlisted

    def _uids(self) -> list:
        return [uid for (uid,) in self._run("SELECT uid FROM ferro_objects WHERE token = %s")]

    def _prune(self, upto: int) -> None:
        self._run("DELETE FROM ferro_tombstones WHERE token = %s AND seq <= %s", upto)

    def _head(self) -> tuple:
        return self.db.head(self.name)

    def _since(self, cursor) -> tuple:
        floor = -1 if cursor is None else cursor
        with self._read():
            tok = self._token()
            rows = self._run("SELECT uid, version, record, tag FROM ferro_objects "
                             "WHERE token = %s AND seq > %s ORDER BY seq", floor).fetchall()
            gone = [] if cursor is None else [u for (u,) in self._run(
                "SELECT uid FROM ferro_tombstones WHERE token = %s AND seq > %s", floor)]
        return tok, rows, gone

    def _counter(self, name: str) -> int | None:
        row = self._run("SELECT next FROM ferro_counters WHERE token = %s AND name = %s", name).fetchone()
        return None if row is None else row[0]

    def _set_counter(self, name: str, value: int) -> None:
        self._run("INSERT INTO ferro_counters (token, name, next) VALUES (%s, %s, %s) "
                  "ON CONFLICT (token, name) DO UPDATE SET next = excluded.next", name, value)

    def _audit_last(self, table: str) -> tuple | None:
        return self._run(f"SELECT seq, digest FROM ferro_audit_{table} WHERE token = %s "
                         "ORDER BY seq DESC LIMIT 1").fetchone()

    def _audit_put(self, table: str, rows: list) -> None:
        with self.db.lock:
            cur = self.db.conn().cursor()
            try:
                cur.executemany(f"INSERT INTO ferro_audit_{table} (token, seq, digest, data) "
                                "VALUES (%s, %s, %s, %s)", [(self.name, *row) for row in rows])
            except psycopg.Error as exc:
                raise self.db.failure("query failed", exc) from None

    def _audit_rows(self, table: str, after: int, limit: int) -> list:
        with self._read():
            return self._run(f"SELECT seq, digest, data FROM ferro_audit_{table} WHERE token = %s "
                             "AND seq > %s ORDER BY seq LIMIT %s", after, limit).fetchall()

    def _audit_delete(self, through: int) -> int:
        self._run("DELETE FROM ferro_audit_checkpoints WHERE token = %s AND seq < %s", through)
        return self._run("DELETE FROM ferro_audit_records WHERE token = %s AND seq <= %s", through).rowcount


class PostgresCatalog(Catalog):
    """The tokens of one PostgreSQL database: the rows of ferro_tokens, in creation order."""

    def __init__(self, dsn: str, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy(),
                 head_ttl: float = HEAD_TTL):
        self.db = Database(dsn, head_ttl)
        self._args = (max_pin_failures, pin_policy)
        self._refused = ""

    def names(self) -> list:
        """The initialized tokens; none while the database cannot be reached (logged once)."""
        try:
            return [name for (name,) in self.db.run("SELECT name FROM ferro_tokens ORDER BY created, name")]
        except PKCS11Error as err:
            if err.reason != self._refused:        # connection errors are logged by Database.failure
                self._refused = err.reason
                if err.rv != C.CKR_DEVICE_ERROR:
                    LOG.error("tokens not served: %s", err.reason)
            return []

    def open(self, name: str) -> PostgresStore:
        return PostgresStore(self.db, name, *self._args)

    def new(self) -> tuple:
        name = f"token-{time.time_ns():020d}-{os.urandom(4).hex()}"
        return name, self.open(name)

    def discard(self, name: str) -> None:
        with self.db.transaction("BEGIN"):
            self.db.run("DELETE FROM ferro_tokens WHERE name = %s", (name,))

    def close(self) -> None:
        self.db.close()
