"""The store kinds the contract tests in test_store.py run over, each as a class that
opens store objects on one token (two store objects on one token behave like two
processes sharing it) and edits a stored row as someone with access to the storage
would (`row`, `set_row`). Add a kind here and every contract test runs on it."""

import contextlib
import sqlite3

from provider.store.memory import MemoryStore
from provider.store.sqlite import SqliteStore

ITER = 1000      # PIN KDF iterations: fast tests


class SqliteKind:
    name = "sqlite"

    def __init__(self, tmp_path, request):
        self.path = str(tmp_path / "tok" / "token-1.sqlite")

    def open(self, max_failures):
        return SqliteStore(self.path, max_pin_failures=max_failures, kdf_iterations=ITER)

    @contextlib.contextmanager
    def _db(self):
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            yield db

    def row(self, uid):
        with self._db() as db:
            return db.execute("SELECT record, tag FROM objects WHERE uid = ?", (uid,)).fetchone()

    def set_row(self, uid, record, tag):
        """Write a row as someone with the file would: keeps the change number moving."""
        with self._db() as db:
            seq = db.execute("UPDATE token SET seq = seq + 1 RETURNING seq").fetchone()[0]
            db.execute("UPDATE objects SET record = ?, tag = ?, seq = ?, version = version + 1 WHERE uid = ?",
                       (record, tag, seq, uid))


class MemoryKind:
    name = "memory"

    def __init__(self, tmp_path, request):
        self.data = None

    def open(self, max_failures):
        store = MemoryStore(self.data, max_pin_failures=max_failures, kdf_iterations=ITER)
        self.data = store.data
        return store

    def row(self, uid):
        return tuple(self.data["objects"][uid][3:])

    def set_row(self, uid, record, tag):
        self.data["token"]["seq"] += 1
        version, lineage = self.data["objects"][uid][:2]
        self.data["objects"][uid] = [version + 1, lineage, self.data["token"]["seq"], record, tag]


KINDS = {kind.name: kind for kind in (SqliteKind, MemoryKind)}
