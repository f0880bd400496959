"""The store kinds the contract tests in test_store.py run over, each as a class that
opens store objects on one token (two store objects on one token behave like two
processes sharing it) and edits a stored row as someone with access to the storage
would (`row`, `set_row`). Add a kind here and every contract test runs on it."""

import base64
import contextlib
import json
import sqlite3

from provider.store import filesystem as fs
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


class FilesystemKind:
    name = "filesystem"

    def __init__(self, tmp_path, request):
        self.root = tmp_path / "tok" / "token-1.d"

    def open(self, max_failures):
        return fs.FilesystemStore(self.root, max_pin_failures=max_failures, kdf_iterations=ITER)

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


KINDS = {kind.name: kind for kind in (SqliteKind, MemoryKind, FilesystemKind)}
