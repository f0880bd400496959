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

Tables:
  token       one row: label, serial, epoch, seq (last change number), public
              sealing key, per PIN salt / KDF iterations / wrapped master key /
              failure counter
  objects     uid, seq of its last write, record (records.py), tag (sealing.py)
  tombstones  uid, seq of its deletion; kept so that every process sees deletes.
changes(cursor) first reads token.seq (one row); only if it moved does it read
the objects and tombstones with seq > cursor, in one read transaction.
"""

import os
import sqlite3
import urllib.parse
from contextlib import contextmanager

from .. import constants as C
from ..errors import PKCS11Error
from .sealing import KDF_ITERATIONS, TOKEN_FIELDS, SealingStore

BUSY_TIMEOUT = 10.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    label BLOB NOT NULL, serial TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    pub_key BLOB NOT NULL,
    so_salt BLOB, so_iters INTEGER, so_wrap BLOB, so_fail INTEGER NOT NULL,
    user_salt BLOB, user_iters INTEGER, user_wrap BLOB, user_fail INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    uid TEXT PRIMARY KEY, seq INTEGER NOT NULL, record BLOB NOT NULL, tag BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS objects_seq ON objects (seq);
CREATE TABLE IF NOT EXISTS tombstones (uid TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones (seq);
"""
_SELECT_TOKEN = f"SELECT {', '.join(TOKEN_FIELDS)} FROM token WHERE id = 1"
_FORKED: list = []   # connections inherited across a fork: never used, never closed


class SqliteStore(SealingStore):
    def __init__(self, path: str, max_pin_failures: int = 10, kdf_iterations: int = KDF_ITERATIONS):
        super().__init__(max_pin_failures, kdf_iterations)
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._seen = False   # a token once seen initialized stays so

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
            self._conn, self._pid = conn, os.getpid()
        return self._conn

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
            db.execute(begin)
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

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
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = self._db()
            db.execute("PRAGMA journal_mode = WAL")
            with self._write():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
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

    def _next_seq(self) -> int:
        return self._db().execute("UPDATE token SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetchone()[0]

    def _put(self, uid: str, record: bytes, tag: bytes) -> None:
        db = self._db()
        db.execute("DELETE FROM tombstones WHERE uid = ?", (uid,))
        db.execute("INSERT OR REPLACE INTO objects (uid, seq, record, tag) VALUES (?, ?, ?, ?)",
                   (uid, self._next_seq(), record, tag))

    def _delete(self, uid: str) -> None:
        db = self._db()
        if db.execute("DELETE FROM objects WHERE uid = ?", (uid,)).rowcount:
            db.execute("INSERT OR REPLACE INTO tombstones (uid, seq) VALUES (?, ?)", (uid, self._next_seq()))

    def _wipe(self) -> None:
        for (uid,) in self._db().execute("SELECT uid FROM objects").fetchall():
            self._delete(uid)

    def _head(self) -> tuple:
        with self._lock:
            return self._db().execute("SELECT seq, epoch FROM token WHERE id = 1").fetchone()

    def _since(self, cursor) -> tuple:
        floor = -1 if cursor is None else cursor
        with self._transaction("BEGIN"):
            tok = self._token()
            db = self._db()
            rows = db.execute("SELECT uid, record, tag FROM objects WHERE seq > ? ORDER BY seq",
                              (floor,)).fetchall()
            gone = [] if cursor is None else [u for (u,) in db.execute(
                "SELECT uid FROM tombstones WHERE seq > ?", (floor,))]
        return tok, rows, gone
