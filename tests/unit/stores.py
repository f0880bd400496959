"""The store kinds the contract tests in test_store.py run over, each as a class that
opens store objects on one token (two store objects on one token behave like two
processes sharing it) and edits a stored row as someone with access to the storage
would (`row`, `set_row`). Add a kind here and every contract test runs on it."""

import base64
import contextlib
import json
import os
import sqlite3
import time

from provider.store import filesystem as fs
from provider.store.sealing import Argon2id, PinPolicy
from provider.store.memory import MemoryStore
from provider.store.sqlite import SqliteStore

FAST = PinPolicy(Argon2id(memory_kib=64, time_cost=1, parallelism=1), failure_delay=0.0)   # fast tests


class SqliteKind:
    name = "sqlite"

    def __init__(self, tmp_path, request):
        self.path = str(tmp_path / "tok" / "token-1.sqlite")

    def open(self, max_failures):
        return SqliteStore(self.path, max_pin_failures=max_failures, pin_policy=FAST)

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
        store = MemoryStore(self.data, max_pin_failures=max_failures, pin_policy=FAST)
        self.data = store.data
        return store

    def row(self, uid):
        return tuple(self.data["objects"][uid][3:])

    def set_row(self, uid, record, tag):
        self.data["token"]["seq"] += 1
        version, lineage = self.data["objects"][uid][:2]
        self.data["objects"][uid] = [version + 1, lineage, self.data["token"]["seq"], record, tag]


class FilesystemKind:
    name = "filesystem"

    def __init__(self, tmp_path, request):
        self.root = tmp_path / "tok" / "token-1.d"

    def open(self, max_failures):
        return fs.FilesystemStore(self.root, max_pin_failures=max_failures, pin_policy=FAST)

    def _obj(self, uid):
        return self.root / fs.KEYS_DIR / fs.file_name(uid)

    def row(self, uid):
        current = json.loads((self._obj(uid) / fs.CURRENT_FILE).read_text())
        data = json.loads((self._obj(uid) / fs.version_file(current["version"])).read_text())
        return base64.b64decode(data["record"]), base64.b64decode(data["tag"])

    def set_row(self, uid, record, tag):
        """Write the files as someone with the directory would: a new version file, the
        pointer moved, a change-log line and the token's change number moved."""
        token_path = self.root / fs.TOKEN_FILE
        token = json.loads(token_path.read_text())
        seq = token["token"]["seq"] = token["token"]["seq"] + 1
        current = json.loads((self._obj(uid) / fs.CURRENT_FILE).read_text())
        version = current["version"] + 1
        (self._obj(uid) / fs.version_file(version)).write_text(json.dumps(
            {"uid": uid, "version": version, "lineage": current["lineage"], "seq": seq,
             "record": base64.b64encode(record).decode(), "tag": base64.b64encode(tag).decode()}))
        (self._obj(uid) / fs.CURRENT_FILE).write_text(json.dumps({**current, "version": version, "seq": seq}))
        with open(self.root / fs.LOG_FILE, "a") as log:
            log.write(f"{seq} {fs.file_name(uid)} {version}\n")
        token_path.write_text(json.dumps(token))


class PostgresKind:
    """A token in the PostgreSQL peer's database (scripts/peers/postgres.sh, one server per
    session), under a name of its own per test.  Every store object has a connection of
    its own and no head cache: each is another process that reads the head every time,
    as the contract's wording has it."""
    name = "postgres"
    head_ttl = 0.0

    def __init__(self, tmp_path, request):
        self.peer = request.getfixturevalue("postgres")
        self.token = f"contract-{os.urandom(8).hex()}"
        self.stores = []
        request.addfinalizer(self._drop)

    def _store(self, database, max_failures):
        from provider.store.postgres import PostgresStore
        store = PostgresStore(database, self.token, max_pin_failures=max_failures, pin_policy=FAST,
                              **({} if database is not self.peer.dsn else {"head_ttl": self.head_ttl}))
        self.stores.append(store)
        return store

    def open(self, max_failures):
        return self._store(self.peer.dsn, max_failures)

    def _drop(self):
        for store in self.stores:
            store.close()
        with self._raw() as db:
            db.execute("DELETE FROM ferro_tokens WHERE name = %s", (self.token,))

    def _raw(self):
        import psycopg
        return psycopg.connect(self.peer.dsn, autocommit=True)

    def row(self, uid):
        with self._raw() as db:
            return db.execute("SELECT record, tag FROM ferro_objects WHERE token = %s AND uid = %s",
                              (self.token, uid)).fetchone()

    def set_row(self, uid, record, tag):
        """Write a row as someone with the database would: keeps the change number moving,
        and notifies as the store's own writes do (one that does not is seen within
        HEAD_TTL: test_store_postgres.py)."""
        with self._raw() as db, db.transaction():
            seq = db.execute("UPDATE ferro_tokens SET seq = seq + 1 WHERE name = %s RETURNING seq",
                             (self.token,)).fetchone()[0]
            db.execute("UPDATE ferro_objects SET record = %s, tag = %s, seq = %s, version = version + 1 "
                       "WHERE token = %s AND uid = %s", (record, tag, seq, self.token, uid))
            db.execute("SELECT pg_notify('ferrohsm', %s)", (self.token,))


class PostgresCachedKind(PostgresKind):
    """The PostgreSQL store as a Library runs it: the store objects of one test share one
    catalog's connection and its LISTEN/NOTIFY head cache, like the tokens of one process."""
    name = "postgres-cached"

    def __init__(self, tmp_path, request):
        super().__init__(tmp_path, request)
        from provider.store.postgres import Database
        self.database = Database(self.peer.dsn)

    def open(self, max_failures):
        return self._store(self.database, max_failures)

    def set_row(self, uid, record, tag):
        """As PostgresKind's, from another connection: its notification reaches the shared
        cache a moment after the commit, as another process's would; wait for it (5 s at most)."""
        db = self.database
        seen = db._gen.get(self.token, 0)
        super().set_row(uid, record, tag)
        deadline = time.monotonic() + 5
        while db._listening and db._gen.get(self.token, 0) == seen and time.monotonic() < deadline:
            time.sleep(0.001)

    def _drop(self):
        super()._drop()
        self.database.close()


KINDS = {kind.name: kind for kind in (SqliteKind, MemoryKind, FilesystemKind, PostgresKind,
                                      PostgresCachedKind)}
