"""A token in one SQLite database file, shared by every process that opens it.

Durability: WAL journal, synchronous=FULL, every write in a `BEGIN IMMEDIATE`
transaction committed before the call returns; a 10 s busy timeout lets two
processes (pkcs11-tool and python-pkcs11, say) take turns.  Each process keeps one
connection, opened lazily and opened again after a fork (an SQLite connection must
not cross a fork; the inherited one is kept, never closed, so that closing it does
not release locks or remove the WAL under the parent).

The file does not exist until initialize(): a free slot's path is only a name.
It is created 0600 (its WAL and shared-memory files inherit that mode), its
directory 0700 when we create it.

Tables (schema 5, in PRAGMA user_version; older files are upgraded in place
when first opened, see MIGRATIONS):
  token       one row: label, serial, epoch, seq (last change number), pruned
              (tombstones up to it are gone), public sealing key, per PIN salt /
              KDF iterations (PBKDF2, before schema 3) / wrapped master key / failure
              counter / KDF parameters (schema 3) / recorded tries (schema 3), the sealed
              list of private objects (manifest; NULL until a schema-2 file's first login),
              the TPM anchor (schema 4, anchor.py; NULL: none)
  objects     uid, version, lineage (whose IV counter it shares; NULL: its own),
              seq of its last write, record (records.py), tag (sealing.py), and the
              index entry (base.STUB: cls, label, cka_id, key_type, private; cls NULL:
              none, as in rows from schema 1, whose record is then read to list it)
  tombstones  uid, seq of its deletion; kept so that every process sees deletes
  counters    name -> next value: IV counters, "iv:<lineage uid>"
  audit_records, audit_checkpoints   (schema 5) seq, digest, data: the audit log
              (base.TokenStore.audit_*), appended in the write transaction of the change
changes(cursor) first reads token.seq (one row); only if it moved does it read
the objects and tombstones with seq > cursor, in one read transaction.
Compare-and-set: a write transaction is BEGIN IMMEDIATE, so the version a write
checks cannot change before it commits.
"""

import json
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from .. import constants as C
from .. import files
from ..errors import PKCS11Error
from ..log import LOG
from .base import Catalog, Entry
from .sealing import LEGACY_PREFIX, SCHEMA_VERSION, TOKEN_FIELDS, PinPolicy, SealingStore

BUSY_TIMEOUT = 10.0
SCHEMA = """
CREATE TABLE token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    label BLOB NOT NULL, serial TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    pruned INTEGER NOT NULL DEFAULT 0, pub_key BLOB NOT NULL,
    so_salt BLOB, so_iters INTEGER, so_wrap BLOB, so_fail INTEGER NOT NULL,
    user_salt BLOB, user_iters INTEGER, user_wrap BLOB, user_fail INTEGER NOT NULL,
    so_kdf TEXT, so_tries BLOB, user_kdf TEXT, user_tries BLOB, manifest BLOB, anchor BLOB);
CREATE TABLE objects (
    uid TEXT PRIMARY KEY, seq INTEGER NOT NULL, record BLOB NOT NULL, tag BLOB NOT NULL,
    version INTEGER NOT NULL DEFAULT 1, lineage TEXT,
    cls INTEGER, label BLOB, cka_id BLOB, key_type INTEGER, private INTEGER);
CREATE INDEX objects_seq ON objects (seq);
CREATE INDEX objects_entry ON objects (uid, version, cls, label, cka_id, key_type, private);
CREATE TABLE tombstones (uid TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX tombstones_seq ON tombstones (seq);
CREATE TABLE counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE audit_checkpoints (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL, data BLOB NOT NULL);
"""
# schema version -> the statements that bring a file at that version to the next.
# Version 1 (user_version 0) is the first release's file: no object versions, no
# counters table (IV counters were in gcm-iv-counters.json beside the tokens).
MIGRATIONS = {
    1: """
ALTER TABLE token ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE objects ADD COLUMN lineage TEXT;
ALTER TABLE objects ADD COLUMN cls INTEGER;
ALTER TABLE objects ADD COLUMN label BLOB;
ALTER TABLE objects ADD COLUMN cka_id BLOB;
ALTER TABLE objects ADD COLUMN key_type INTEGER;
ALTER TABLE objects ADD COLUMN private INTEGER;
CREATE INDEX objects_entry ON objects (uid, version, cls, label, cka_id, key_type, private);
CREATE TABLE counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
""",
    2: """
ALTER TABLE token ADD COLUMN so_kdf TEXT;
ALTER TABLE token ADD COLUMN so_tries BLOB;
ALTER TABLE token ADD COLUMN user_kdf TEXT;
ALTER TABLE token ADD COLUMN user_tries BLOB;
ALTER TABLE token ADD COLUMN manifest BLOB;
""",
    3: "ALTER TABLE token ADD COLUMN anchor BLOB;",
    4: """
CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE audit_checkpoints (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL, data BLOB NOT NULL);
""",
}
LEGACY_IV_FILE = "gcm-iv-counters.json"
_SELECT_TOKEN = f"SELECT {', '.join(TOKEN_FIELDS)} FROM token WHERE id = 1"
_FORKED: list = []   # connections inherited across a fork: never used, never closed


def _script(db, sql: str) -> None:
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


class SqliteStore(SealingStore):
    def __init__(self, path: str, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        super().__init__(max_pin_failures, pin_policy)
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._seen = False   # a token once seen initialized stays so
        self._depth = 0      # nesting of _transaction (under self._lock)

    # connection ----------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            _FORKED.append(self._conn)
            self._conn = None
        if self._conn is None:
            if not os.path.exists(self.path):
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
            uri = "file:" + urllib.parse.quote(self.path) + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")   # a freed record's bytes are overwritten
            self._conn, self._pid = conn, os.getpid()
            self._upgrade(conn)
        return self._conn

    def _upgrade(self, db) -> None:
        """Bring an older file to SCHEMA_VERSION in place, in one transaction; a file
        from a newer release is refused (its meaning may have changed)."""
        version = db.execute("PRAGMA user_version").fetchone()[0] or 1
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            self._conn = None
            db.close()
            raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, f"token schema {version} is newer than this release's")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0] or 1
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'token'").fetchone() is None:
                db.execute("ROLLBACK")        # not a token (yet): nothing to upgrade
                return
            start = version
            while version < SCHEMA_VERSION:
                _script(db, MIGRATIONS[version])
                version += 1
            if start < 2:
                self._import_legacy_counters(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
            LOG.info("token file %s upgraded from schema %d to %d", self.path, start, SCHEMA_VERSION)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _import_legacy_counters(self, db) -> None:
        """The first release kept GCM IV counters in one JSON file beside the tokens,
        keyed by a hash of the key value; they move into the store once, at the upgrade:
        from then on the file is never read, so deleting or restoring it changes nothing."""
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), LEGACY_IV_FILE)
        try:
            with open(path) as f:
                table = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise PKCS11Error(C.CKR_DEVICE_ERROR, f"cannot read {LEGACY_IV_FILE} to upgrade: {exc}") from None
        for ident, value in table.items():
            if isinstance(ident, str) and type(value) is int and value >= 0:
                db.execute("INSERT INTO counters (name, next) VALUES (?, ?) ON CONFLICT (name) "
                           "DO UPDATE SET next = MAX(next, excluded.next)", (LEGACY_PREFIX + ident, value))

    def close(self) -> None:
        with self._lock:
            super().close()
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    @contextmanager
    def _transaction(self, begin: str):
        with self._lock:
            db = self._db()
            if self._depth:                  # joins the transaction already open
                self._depth += 1
                try:
                    yield db
                finally:
                    self._depth -= 1
                return
            db.execute(begin)
            self._depth = 1
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _write(self):
        return self._transaction("BEGIN IMMEDIATE")

    # primitives -------------------------------------------------------------------------
    def _exists(self) -> bool:
        with self._lock:
            if not self._seen and os.path.exists(self.path):
                try:
                    self._seen = self._db().execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'token'").fetchone() is not None \
                        and self._db().execute("SELECT 1 FROM token").fetchone() is not None
                except sqlite3.DatabaseError:
                    self._seen = False
            return self._seen

    def _create(self, fields: dict) -> None:
        with self._lock:
            directory = os.path.dirname(os.path.abspath(self.path))
            files.private_dir(directory)
            # 0600 before SQLite opens it: SQLite gives its -wal and -shm files the db's mode
            os.close(files.private_fd(self.path, os.O_CREAT | os.O_RDWR))
            db = self._db()
            db.execute("PRAGMA journal_mode = WAL")
            with self._write():
                if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'token'").fetchone() is None:
                    _script(db, SCHEMA)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("DELETE FROM token")
                db.execute(f"INSERT INTO token (id, {', '.join(fields)}) VALUES (1, {', '.join('?' * len(fields))})",
                           tuple(fields.values()))
            self._seen = True

    def _token(self) -> dict:
        with self._lock:
            row = self._db().execute(_SELECT_TOKEN).fetchone()
            if row is None:
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
            return dict(zip(TOKEN_FIELDS, row))

    def _update(self, fields: dict) -> None:
        unknown = set(fields) - set(TOKEN_FIELDS)
        assert not unknown, unknown
        self._db().execute(f"UPDATE token SET {', '.join(f + ' = ?' for f in fields)} WHERE id = 1",
                           tuple(fields.values()))

    def _scrub(self) -> None:
        """Copy the WAL into the database and truncate it, so the pages the records
        had before (zeroed there by secure_delete) leave both files now."""
        self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _next_seq(self) -> int:
        return self._db().execute("UPDATE token SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetchone()[0]

    def _row(self, uid: str) -> tuple | None:
        return self._db().execute("SELECT version, COALESCE(lineage, uid) FROM objects WHERE uid = ?",
                                  (uid,)).fetchone()

    def _tombstoned(self, uid: str) -> bool:
        return self._db().execute("SELECT 1 FROM tombstones WHERE uid = ?", (uid,)).fetchone() is not None

    def _put(self, uid: str, version: int, record: bytes, tag: bytes, lineage: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO objects (uid, version, lineage, seq, record, tag) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (uid, version, lineage, self._next_seq(), record, tag))

    def _delete(self, uid: str) -> None:
        db = self._db()
        db.execute("DELETE FROM objects WHERE uid = ?", (uid,))
        db.execute("INSERT OR REPLACE INTO tombstones (uid, seq) VALUES (?, ?)", (uid, self._next_seq()))

    def _get(self, uid: str) -> tuple | None:
        return self._db().execute("SELECT version, record, tag FROM objects WHERE uid = ?", (uid,)).fetchone()

    def _put_index(self, uid: str, stub: dict) -> None:
        self._db().execute("UPDATE objects SET cls = ?, label = ?, cka_id = ?, key_type = ?, private = ? "
                           "WHERE uid = ?", (stub[C.CKA_CLASS], stub.get(C.CKA_LABEL), stub.get(C.CKA_ID),
                                             stub.get(C.CKA_KEY_TYPE), int(bool(stub.get(C.CKA_PRIVATE))), uid))

    def _index_rows(self) -> tuple:
        with self._transaction("BEGIN"):
            rows = self._db().execute(
                "SELECT uid, version, cls, label, cka_id, key_type, private FROM objects").fetchall()
            tok = self._token()
        return tok, [(uid, version, None if cls is None else Entry(cls, label, cka_id, key_type, private == 1), None)
                     for uid, version, cls, label, cka_id, key_type, private in rows]

    def _private_rows(self) -> tuple:
        with self._transaction("BEGIN"):
            db = self._db()
            private = db.execute("SELECT uid, version FROM objects WHERE cls IS NOT NULL AND private = 1").fetchall()
            unlisted = [uid for (uid,) in db.execute("SELECT uid FROM objects WHERE cls IS NULL")]
            return self._token(), private, unlisted

    def _uids(self) -> list:
        return [uid for (uid,) in self._db().execute("SELECT uid FROM objects")]

    def _prune(self, upto: int) -> None:
        self._db().execute("DELETE FROM tombstones WHERE seq <= ?", (upto,))

    def _head(self) -> tuple:
        with self._lock:
            return self._db().execute("SELECT seq, epoch FROM token WHERE id = 1").fetchone()

    def _since(self, cursor) -> tuple:
        floor = -1 if cursor is None else cursor
        with self._transaction("BEGIN"):
            tok = self._token()
            db = self._db()
            rows = db.execute("SELECT uid, version, record, tag FROM objects WHERE seq > ? ORDER BY seq",
                              (floor,)).fetchall()
            gone = [] if cursor is None else [u for (u,) in db.execute(
                "SELECT uid FROM tombstones WHERE seq > ?", (floor,))]
        return tok, rows, gone

    def _counter(self, name: str) -> int | None:
        row = self._db().execute("SELECT next FROM counters WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def _set_counter(self, name: str, value: int) -> None:
        self._db().execute("INSERT OR REPLACE INTO counters (name, next) VALUES (?, ?)", (name, value))

    def _audit_last(self, table: str) -> tuple | None:
        return self._db().execute(f"SELECT seq, digest FROM audit_{table} ORDER BY seq DESC LIMIT 1").fetchone()

    def _audit_put(self, table: str, rows: list) -> None:
        self._db().executemany(f"INSERT INTO audit_{table} (seq, digest, data) VALUES (?, ?, ?)", rows)

    def _audit_rows(self, table: str, after: int, limit: int) -> list:
        with self._transaction("BEGIN"):
            return self._db().execute(f"SELECT seq, digest, data FROM audit_{table} WHERE seq > ? "
                                      "ORDER BY seq LIMIT ?", (after, limit)).fetchall()

    def _audit_delete(self, through: int) -> int:
        db = self._db()
        db.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (through,))
        return db.execute("DELETE FROM audit_records WHERE seq <= ?", (through,)).rowcount


class SqliteCatalog(Catalog):
    """The default store: a directory holding one SQLite file per token,
    `token-<creation time ns>-<random>.sqlite` (the first release's layout)."""

    PATTERN = "token-*.sqlite"

    def __init__(self, directory, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        self.directory = Path(directory)
        self._args = (max_pin_failures, pin_policy)
        self._known: set[str] = set()      # names seen initialized (a token stays so)
        files.private_dir(self.directory)

    def names(self) -> list:
        for path in self.directory.glob(self.PATTERN):
            if path.name not in self._known:
                store = self.open(path.name)
                try:
                    if store.initialized():
                        self._known.add(path.name)
                except PKCS11Error as err:      # e.g. a file from a newer release: not ours to serve
                    LOG.warning("token file %s not served: %s", path, err.reason)
                finally:
                    store.close()
        return sorted(self._known)

    def open(self, name: str) -> SqliteStore:
        return SqliteStore(str(self.directory / name), *self._args)

    def new(self) -> tuple:
        name = f"token-{time.time_ns():020d}-{os.urandom(4).hex()}.sqlite"
        return name, self.open(name)

    def discard(self, name: str) -> None:
        path = str(self.directory / name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
