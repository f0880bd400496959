"""A token as one directory of small files, shared by every process that opens it.

Layout of a token directory (files 0600, directories 0700):
  token.json          {"schema": 4, "token": TOKEN_FIELDS (bytes as base64)}; it exists
                      once the token is initialized; seq / epoch in it answer head()
  lock                flock(2): exclusive for a write transaction, shared for a read
  journal.json        only between the commit point of a transaction and its end (below)
  changes.log         append-only change feed, one line per change in seq order:
                      `seq <object dir> <version>` or `seq <object dir> -` (destroyed)
  keys/<uid>/         one directory per object (the uid percent-encoded: file_name)
      vNNNNNNNN.json  the record of version N: uid, version, lineage, seq, record and
                      tag (base64); written once, never changed; superseded ones removed
      current.json    {"version", "lineage", "seq", "entry"}: which version is the object,
                      and its index entry (base.STUB: class, label, id, key type, private)
                      so that start-up lists every object without reading its record
      tombstone.json  {"seq"} instead of current.json once destroyed: the directory stays,
                      with no version file left, so the uid is never written again (the
                      tombstone outlives pruning, which only shortens changes.log)
  counters/<name>     an IV counter's next value (name percent-encoded)
  audit-records.log, audit-checkpoints.log   (schema 5) the audit log (base.TokenStore.audit_*):
                      one line `seq <digest hex> <data base64>` per row, in seq order, appended
                      by the journal like changes.log (a prune replaces the file)

Every file is written by `write_atomic`: temp file, fsync, rename, directory fsync (the
temp files in the token directory: after a crash, recovery removes them from there).

A write transaction (`_write`, re-entrant: nested joins the outer) takes the exclusive
lock, collects its changes in memory (`_Tx`: the primitives read through it), and at
the end commits:
  1. journal.json: everything the transaction changes (the new version records, pointers
     to move, tombstones, counters, change-log lines with the log's size before them,
     the new token record); once it is on disk the transaction is committed;
  2. apply the journal (every step idempotent; files fsynced, then their directories),
     then remove it.
Whoever next takes the lock, to write or to read, and finds a journal (its writer died
in 2) applies it again first: a transaction is on disk whole or not at all.  A
transaction that changes one file only (the token record: a PIN failure counter; one
IV counter: an IV block reserved) is one atomic replace of it and needs no journal.
A write of one object costs 9 fsyncs (journal and its directory; version, pointer, log
and token record; the object's, keys/ (a new object) and the token's directories).
If applying fails after the commit point (the disk full, say), the call raises but the
transaction stands: the next one to take the lock completes it.

Readers take the shared lock (never seeing a half-applied transaction).  head() reads
token.json alone (replaced atomically).  changes(cursor) finds the cursor in
changes.log by bisection and reads only the version files of the objects changed
after it: its cost does not grow with the number of objects.  index() (a process
opening the token) reads each object's current.json, not its record.

Fork safety: the lock file is opened again after a pid change (a flock belongs to
the open file, which a forked child shares with its parent).
"""

import base64
import fcntl
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from .. import constants as C
from .. import files
from ..errors import PKCS11Error
from ..log import LOG
from .base import Catalog, Entry
from .sealing import AUDIT_TABLES, SCHEMA_VERSION, TOKEN_FIELDS, PinPolicy, SealingStore

TOKEN_FILE, LOCK_FILE, JOURNAL_FILE, LOG_FILE = "token.json", "lock", "journal.json", "changes.log"
KEYS_DIR, COUNTERS_DIR = "keys", "counters"
AUDIT_FILES = {table: f"audit-{table}.log" for table in AUDIT_TABLES}
_TAIL_BLOCK = 65536       # bytes read back from a log's end at a time to find its last line
CURRENT_FILE, TOMBSTONE_FILE = "current.json", "tombstone.json"
BYTES_FIELDS = frozenset({"label", "pub_key", "so_salt", "so_wrap", "user_salt", "user_wrap",
                          "so_tries", "user_tries", "manifest", "anchor"})
# schema -> the token fields a token.json of that schema lacks, with their values
# (read as if present; the next write of token.json writes today's schema)
MIGRATIONS = {2: {"so_kdf": None, "so_tries": None, "user_kdf": None, "user_tries": None,
                  "manifest": None},
              3: {"anchor": None},
              4: {}}
POINTER_FIELDS = ("version", "lineage", "seq", "entry")
MAX_NAME = 200
_VERSION_FILE = re.compile(r"v(\d{8,})\.json")
_BISECT_BLOCK = 8192      # bisection stops when the range is this small (> 2 log lines)


# --- files ------------------------------------------------------------------------
def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data: bytes, sync_dir: bool = True, tmp_dir=None) -> None:
    """Replace `path` with `data` durably: temp file (beside it, or in `tmp_dir` on the same
    filesystem), fsync, rename, fsync the directory (the caller does that last step itself,
    once for several files, if `sync_dir` is false).
    Whoever reads `path` sees the old content or the new, never a part."""
    path = str(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(str(tmp_dir) if tmp_dir is not None else directory,
                       f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(directory or ".")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _mkdir(path) -> bool:
    """Create a 0700 directory (its parent exists); True if it is new (fsync the parent)."""
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        return False


def _read_json(path):
    """The parsed file, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def file_name(name: str) -> str:
    """A uid or counter name as one file name (percent-encoded; reversible by `name_of`)."""
    enc = urllib.parse.quote(name, safe="")
    if enc.startswith("."):                 # no ".", "..", or hidden/temp names
        enc = "%2E" + enc[1:]
    enc = enc or "%"
    if len(enc) > MAX_NAME:
        raise PKCS11Error(C.CKR_DEVICE_ERROR, f"object name too long for the filesystem store ({len(enc)})")
    return enc


def name_of(enc: str) -> str:
    return "" if enc == "%" else urllib.parse.unquote(enc)


def version_file(version: int) -> str:
    return f"v{version:08d}.json"


def encode_token(tok: dict) -> bytes:
    fields = {k: _b64(v) if k in BYTES_FIELDS and v is not None else v for k, v in tok.items()}
    return _dumps({"schema": SCHEMA_VERSION, "token": fields})


def decode_token(data: dict) -> dict:
    schema = data.get("schema")
    if schema != SCHEMA_VERSION and schema not in MIGRATIONS:
        raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, f"token schema {schema!r} is not this release's "
                                                      f"({SCHEMA_VERSION})")
    fields = dict(data["token"])
    while schema != SCHEMA_VERSION:
        fields.update(MIGRATIONS[schema])
        schema += 1
    if set(fields) != set(TOKEN_FIELDS):
        raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token record fields do not match")
    return {k: _unb64(v) if k in BYTES_FIELDS and v is not None else v for k, v in fields.items()}


class _Tx:
    """What one write transaction changed, not yet on disk."""

    def __init__(self, token: dict):
        self.token = token
        self.token_dirty = False
        self.objects: dict[str, dict] = {}     # object dir -> put {version, lineage, seq, uid, record, tag}
        #                                         or delete {deleted: seq}
        self.counters: dict[str, int] = {}     # counter name -> next value
        self.lines: list[str] = []             # change log lines
        self.prune: int | None = None
        self.audit: dict[str, list] = {table: [] for table in AUDIT_TABLES}   # audit log lines
        self.audit_cut: int | None = None      # audit_prune's `through`

    def audited(self) -> bool:
        return any(self.audit.values()) or self.audit_cut is not None

    def empty(self) -> bool:
        return not (self.token_dirty or self.objects or self.counters or self.audited())


class FilesystemStore(SealingStore):
    def __init__(self, directory, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        super().__init__(max_pin_failures, pin_policy)
        self.root = Path(directory)
        self._keys_dir = self.root / KEYS_DIR
        self._counters_dir = self.root / COUNTERS_DIR
        self._token_path = self.root / TOKEN_FILE
        self._journal_path = self.root / JOURNAL_FILE
        self._log_path = self.root / LOG_FILE
        self._objects = str(self._keys_dir)      # (str paths where it is per object: pathlib costs)
        self._fd: int | None = None        # the lock file, opened by this pid
        self._pid = 0
        self._depth = 0                    # nesting of _write (under self._lock)
        self._tx: _Tx | None = None
        self._owner = 0                    # the thread running the transaction
        self._seen = False

    # locking and recovery --------------------------------------------------------------
    def _lock_fd(self) -> int:
        if self._pid != os.getpid():       # forked: the inherited lock and transaction are not ours
            if self._fd is not None:
                os.close(self._fd)         # the parent's copy keeps its lock, if it holds one
            self._fd, self._depth, self._tx = None, 0, None
        if self._fd is None:
            if not self.root.is_dir():
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
            self._fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def _recover(self) -> None:
        """Under the exclusive lock: finish a transaction whose writer died after its commit
        point, and remove the temp files a dead writer left (every file is written under
        this lock, its temp file in the token directory: any temp file seen now is one)."""
        self._sweep(self.root)
        try:
            journal = _read_json(self._journal_path)
        except ValueError:
            journal = False
        if journal is None:
            return
        if not isinstance(journal, dict):
            LOG.error("token %s: %s is unreadable; the token is not used until it is repaired",
                      self.root.name, JOURNAL_FILE)
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "transaction journal unreadable")
        LOG.warning("token %s: rolling forward a transaction interrupted after its commit", self.root.name)
        self._apply(journal)
        self._end_journal()

    def _replace(self, path, data: bytes, sync_dir: bool = True) -> None:
        """write_atomic with the temp file in the token directory, where recovery finds it."""
        write_atomic(path, data, sync_dir=sync_dir, tmp_dir=self.root)

    @staticmethod
    def _sweep(directory) -> None:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                _unlink(os.path.join(directory, name))

    @contextmanager
    def _reading(self):
        """A consistent view of the files: the shared lock (or our own write transaction)."""
        with self._lock:
            fd = self._lock_fd()
            if self._depth:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if self._journal_path.exists():
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._recover()
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _write(self):
        with self._lock:
            fd = self._lock_fd()
            if self._depth:                    # joins the transaction already open
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._recover()
                self._tx = _Tx(self._read_token())
                self._depth, self._owner = 1, threading.get_ident()
                yield
                self._commit(self._tx)
            finally:
                self._tx, self._depth = None, 0
                fcntl.flock(fd, fcntl.LOCK_UN)

    # commit ---------------------------------------------------------------------------
    def _commit(self, tx: _Tx) -> None:
        if tx.empty():
            return
        if not (tx.objects or tx.counters or tx.audited()):     # the token record alone: one atomic replace
            self._replace(self._token_path, encode_token(tx.token))
            return
        if not (tx.objects or tx.token_dirty or tx.audited()) and len(tx.counters) == 1:   # one IV counter
            ((name, value),) = tx.counters.items()
            self._replace(self._counters_dir / file_name(name), str(value).encode())
            return
        puts, deletes = [], []
        for name, entry in tx.objects.items():
            obj_dir = self._keys_dir / name
            if "deleted" in entry:
                files = sorted(f for f in os.listdir(obj_dir) if _VERSION_FILE.fullmatch(f)) \
                    if obj_dir.is_dir() else []
                deletes.append({"dir": name, "seq": entry["deleted"], "files": files})
            else:
                current = self._current(name)
                puts.append({"dir": name, "version": entry["version"], "lineage": entry["lineage"],
                             "seq": entry["seq"], "uid": entry["uid"], "record": _b64(entry["record"]),
                             "tag": _b64(entry["tag"]), "entry": entry.get("entry"),
                             "old": current and current["version"]})
        lines = "".join(tx.lines)
        if tx.prune is not None:
            log = {"replace": "".join(self._log_lines_after(tx.prune)) + lines}
        else:
            log = {"size": self._log_size(), "lines": lines}
        audit = {}
        for table, added in tx.audit.items():
            if tx.audit_cut is not None:
                cut = tx.audit_cut + (table == "records")      # records <= cut go, checkpoints < cut
                kept = self._log_lines_after(cut - 1, self.root / AUDIT_FILES[table])
                audit[table] = {"replace": "".join(kept) + "".join(added)}
            elif added:
                audit[table] = {"size": self._log_size(self.root / AUDIT_FILES[table]), "lines": "".join(added)}
        journal = {"puts": puts, "deletes": deletes, "log": log, "audit": audit,
                   "counters": {file_name(k): v for k, v in tx.counters.items()},
                   "token": encode_token(tx.token).decode() if tx.token_dirty else None}
        self._replace(self._journal_path, _dumps(journal))     # the commit point
        self._apply(journal)
        _unlink(self._journal_path)     # made durable by the next commit's fsync of this directory;
        #                                 until then a crash only applies the journal again

    def _apply(self, journal: dict) -> None:
        """Make the files what `journal` says; running it again (after a crash) changes nothing.
        Each file is fsynced as written, each directory once at the end, before the
        journal goes."""
        dirs, new_dirs = {self.root}, False
        for put in journal["puts"]:
            obj_dir = self._keys_dir / put["dir"]
            new_dirs |= _mkdir(obj_dir)
            dirs.add(obj_dir)
            self._replace(obj_dir / version_file(put["version"]), _dumps(
                {k: put[k] for k in ("uid", "version", "lineage", "seq", "record", "tag")}), sync_dir=False)
            pointer = {k: put[k] for k in POINTER_FIELDS if put[k] is not None}
            self._replace(obj_dir / CURRENT_FILE, _dumps(pointer), sync_dir=False)
            if put["old"] is not None and put["old"] != put["version"]:
                _unlink(obj_dir / version_file(put["old"]))
        for gone in journal["deletes"]:
            obj_dir = self._keys_dir / gone["dir"]
            new_dirs |= _mkdir(obj_dir)
            dirs.add(obj_dir)
            self._replace(obj_dir / TOMBSTONE_FILE, _dumps({"seq": gone["seq"]}), sync_dir=False)
            _unlink(obj_dir / CURRENT_FILE)
            for name in gone["files"]:
                _unlink(obj_dir / name)
        if new_dirs:
            dirs.add(self._keys_dir)
        if journal["counters"]:
            if _mkdir(self._counters_dir):
                dirs.add(self.root)
            dirs.add(self._counters_dir)
            for name, value in journal["counters"].items():
                self._replace(self._counters_dir / name, str(value).encode(), sync_dir=False)
        self._apply_log(self._log_path, journal["log"])
        for table, log in journal.get("audit", {}).items():     # (a journal from before schema 5: none)
            self._apply_log(self.root / AUDIT_FILES[table], log)
        if journal["token"] is not None:
            self._replace(self._token_path, journal["token"].encode(), sync_dir=False)
        for directory in dirs:
            fsync_dir(directory)

    def _apply_log(self, path, log: dict) -> None:
        """Replace an append-only log, or append lines at the size it had before them."""
        if "replace" in log:
            self._replace(path, log["replace"].encode(), sync_dir=False)
        elif log["lines"]:                          # (none when only IV counters changed)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, log["size"])       # drop what a dead writer appended of these lines
                os.lseek(fd, log["size"], os.SEEK_SET)
                _write_all(fd, log["lines"].encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def _end_journal(self) -> None:
        _unlink(self._journal_path)
        fsync_dir(self.root)

    # the change log ------------------------------------------------------------------
    def _log_size(self, path=None) -> int:
        try:
            return os.stat(path or self._log_path).st_size
        except FileNotFoundError:
            return 0

    def _log_lines_after(self, cursor: int, path=None, limit: int | None = None) -> list:
        """A log's lines (the change log's by default) with seq > cursor, `limit` at
        most: bisection, then reading from there on."""
        try:
            f = open(path or self._log_path, "rb")
        except FileNotFoundError:
            return []
        with f:
            lo, hi = 0, os.fstat(f.fileno()).st_size     # lo: a line start with every line before it <= cursor
            while hi - lo > _BISECT_BLOCK:
                mid = (lo + hi) // 2
                f.seek(mid)
                f.readline()                             # to the next line start
                start = f.tell()
                line = f.readline()
                if start >= hi or not line:
                    break
                if int(line.split(b" ", 1)[0]) > cursor:
                    hi = start
                else:
                    lo = start + len(line)
            f.seek(lo)
            out = []
            for line in f:
                if int(line.split(b" ", 1)[0]) > cursor:
                    out.append(line.decode())
                    if limit is not None and len(out) >= limit:
                        break
        return out

    def _last_line(self, path) -> str | None:
        """The last line of a log, reading back from its end."""
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        with f:
            end = os.fstat(f.fileno()).st_size
            tail, pos = b"", end
            while pos > 0:
                pos = max(0, pos - _TAIL_BLOCK)
                f.seek(pos)
                tail = f.read(end - pos)
                if tail.count(b"\n") >= 2 or pos == 0:
                    break
            lines = tail.splitlines()
            return lines[-1].decode() if lines else None

    # reading ----------------------------------------------------------------------------
    def _read_token(self) -> dict:
        try:
            data = _read_json(self._token_path)
            if data is None:
                raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
            return decode_token(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PKCS11Error(C.CKR_DEVICE_ERROR, f"token record {self._token_path} unreadable") from None

    def _current(self, name: str) -> dict | None:
        """The object's pointer, or None (no such object, or destroyed)."""
        try:
            entry = _read_json(os.path.join(self._objects, name, CURRENT_FILE))
            if entry is None or (type(entry["version"]) is int and isinstance(entry["lineage"], str)):
                return entry
        except (ValueError, KeyError, TypeError):
            pass
        LOG.error("token %s: the pointer of object %s is unreadable", self.root.name, name_of(name))
        raise PKCS11Error(C.CKR_DEVICE_ERROR, "object pointer unreadable")

    def _version_row(self, name: str, version: int) -> tuple | None:
        """(uid, version, record, tag, seq) of a stored version, or None (missing or unreadable)."""
        try:
            data = _read_json(os.path.join(self._objects, name, version_file(version)))
            if data is not None:
                return data["uid"], data["version"], _unb64(data["record"]), _unb64(data["tag"]), data["seq"]
        except (ValueError, KeyError, TypeError):
            pass
        LOG.warning("token %s: version %d of object %s unreadable; not served", self.root.name, version,
                    name_of(name))
        return None

    # primitives -------------------------------------------------------------------------
    def _exists(self) -> bool:
        with self._lock:
            if not self._seen and self._token_path.exists():
                try:
                    self._read_token()
                    self._seen = True
                except PKCS11Error as err:
                    if err.rv != C.CKR_DEVICE_ERROR:     # (a newer schema: said, not hidden)
                        raise
                    self._seen = False
            return self._seen

    def _create(self, fields: dict) -> None:
        with self._lock:
            files.private_dir(self.root.parent)
            if _mkdir(self.root):
                fsync_dir(self.root.parent)
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _unlink(self._journal_path)                # what a failed earlier attempt left
                for leftover in (self._keys_dir, self._counters_dir):
                    shutil.rmtree(leftover, ignore_errors=True)
                _unlink(self._log_path)
                _mkdir(self._keys_dir)
                _mkdir(self._counters_dir)
                fsync_dir(self.root)
                self._replace(self._token_path, encode_token(dict(fields)))   # now it is a token
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._seen = True

    def _token(self) -> dict:
        tx = self._tx          # (label, pin_flags... read it without the store lock: another
        #                        thread's transaction is not ours to see)
        if tx is not None and self._owner == threading.get_ident() and self._pid == os.getpid():
            return dict(tx.token)
        return self._read_token()

    def _update(self, fields: dict) -> None:
        unknown = set(fields) - set(TOKEN_FIELDS)
        assert not unknown, unknown
        self._tx.token.update(fields)
        self._tx.token_dirty = True

    def _next_seq(self) -> int:
        self._tx.token["seq"] += 1
        self._tx.token_dirty = True
        return self._tx.token["seq"]

    def _row(self, uid: str) -> tuple | None:
        name = file_name(uid)
        entry = self._tx.objects.get(name) if self._tx else None
        if entry is None:
            entry = self._current(name)
        if entry is None or "deleted" in entry:
            return None
        return entry["version"], entry["lineage"]

    def _tombstoned(self, uid: str) -> bool:
        name = file_name(uid)
        entry = self._tx.objects.get(name) if self._tx else None
        if entry is not None:
            return "deleted" in entry
        return (self._keys_dir / name / TOMBSTONE_FILE).exists()

    def _put(self, uid: str, version: int, record: bytes, tag: bytes, lineage: str) -> None:
        name, seq = file_name(uid), self._next_seq()
        self._tx.objects[name] = {"uid": uid, "version": version, "lineage": lineage, "seq": seq,
                                  "record": bytes(record), "tag": bytes(tag)}
        self._tx.lines.append(f"{seq} {name} {version}\n")

    def _put_index(self, uid: str, stub: dict) -> None:
        cls = stub.get(C.CKA_CLASS)
        if type(cls) is int:
            label, cka_id = stub.get(C.CKA_LABEL), stub.get(C.CKA_ID)
            self._tx.objects[file_name(uid)]["entry"] = [
                cls, None if label is None else _b64(label), None if cka_id is None else _b64(cka_id),
                stub.get(C.CKA_KEY_TYPE), bool(stub.get(C.CKA_PRIVATE))]

    def _delete(self, uid: str) -> None:
        name, seq = file_name(uid), self._next_seq()
        self._tx.objects[name] = {"deleted": seq}
        self._tx.lines.append(f"{seq} {name} -\n")

    def _object_dirs(self) -> list:
        try:
            return [n for n in os.listdir(self._objects) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def _stored_names(self) -> list:
        return [n for n in self._object_dirs() if os.path.exists(os.path.join(self._objects, n, CURRENT_FILE))]

    def _uids(self) -> list:
        names = set(self._stored_names())
        for name, entry in (self._tx.objects.items() if self._tx else ()):
            (names.discard if "deleted" in entry else names.add)(name)
        return [name_of(n) for n in names]

    def _prune(self, upto: int) -> None:
        self._tx.prune = upto if self._tx.prune is None else max(upto, self._tx.prune)

    def _head(self) -> tuple:
        with self._lock:
            if self._depth and self._tx is not None:
                tok = self._tx.token
            else:
                if self._journal_path.exists():
                    with self._reading():      # rolls the dead writer's transaction forward
                        pass
                try:                                    # (no need to decode the whole record)
                    data = _read_json(self._token_path)
                    if data["schema"] == SCHEMA_VERSION or data["schema"] in MIGRATIONS:
                        return data["token"]["seq"], data["token"]["epoch"]
                except (ValueError, KeyError, TypeError):
                    pass
                tok = self._read_token()                # raises the reason
            return tok["seq"], tok["epoch"]

    def _since(self, cursor) -> tuple:
        with self._reading():
            tok = self._token()
            tx = self._tx
            rows, gone = [], []
            if cursor is None:
                for name, entry in self._live_entries(tx):
                    row = self._row_of(name, entry)
                    if row is not None:
                        rows.append(row)
            else:
                lines = self._log_lines_after(cursor) + (tx.lines if tx else [])
                latest = {}
                for line in lines:
                    seq, name, version = line.split()
                    latest.pop(name, None)              # keep seq order of the last change
                    latest[name] = (int(seq), version)
                for name, (seq, version) in latest.items():
                    row = None if version == "-" else self._row_of(
                        name, (tx.objects.get(name) if tx else None) or {"version": int(version)})
                    if row is None:
                        gone.append(name_of(name))
                    else:
                        rows.append(row)
            rows.sort(key=lambda r: r[4])
        return tok, [r[:4] for r in rows], gone

    def _live_entries(self, tx):
        """(directory name, pointer) of every object there is, this transaction's own
        writes included; destroyed ones and unreadable pointers (logged) left out."""
        latest = dict.fromkeys(self._object_dirs())
        if tx:
            latest.update(tx.objects)
        for name, entry in latest.items():
            try:
                entry = entry or self._current(name)
            except PKCS11Error:
                continue
            if entry is not None and "deleted" not in entry:
                yield name, entry

    def _index_rows(self) -> tuple:
        """Every object's pointer, with its index entry: one small file per object."""
        with self._reading():
            tok = self._token()
            rows = [(entry["seq"], name_of(name), entry["version"], _entry_of(entry.get("entry")))
                    for name, entry in self._live_entries(self._tx)]
        rows.sort()
        return tok, [(uid, version, stub, None) for _, uid, version, stub in rows]

    def _get(self, uid: str) -> tuple | None:
        name = file_name(uid)
        with self._reading():
            entry = self._tx.objects.get(name) if self._tx else None
            try:
                entry = entry or self._current(name)
            except PKCS11Error:
                return None                         # (logged)
            if entry is None or "deleted" in entry:
                return None
            row = self._row_of(name, entry)
        return None if row is None else row[1:4]

    def _row_of(self, name: str, entry: dict) -> tuple | None:
        """(uid, version, record, tag, seq) of an object at `entry` (a pending put or a pointer)."""
        if "record" in entry:
            return entry["uid"], entry["version"], entry["record"], entry["tag"], entry["seq"]
        return self._version_row(name, entry["version"])

    def _counter(self, name: str) -> int | None:
        if self._tx and name in self._tx.counters:
            return self._tx.counters[name]
        try:
            with open(self._counters_dir / file_name(name), "rb") as f:
                return int(f.read())
        except FileNotFoundError:
            return None

    def _set_counter(self, name: str, value: int) -> None:
        self._tx.counters[name] = value

    # the audit log ----------------------------------------------------------------------
    def _audit_last(self, table: str) -> tuple | None:
        with self._reading():
            tx = self._tx if self._depth else None
            lines = list(tx.audit[table]) if tx else []
            if not lines:
                last = self._last_line(self.root / AUDIT_FILES[table])
                lines = [last] if last else []
            row = _audit_row(lines[-1]) if lines else None
            if row and tx and tx.audit_cut is not None and row[0] <= tx.audit_cut - (table == "checkpoints"):
                return None                    # pruned in this transaction, nothing after it yet
            return row and row[:2]

    def _audit_put(self, table: str, rows: list) -> None:
        self._tx.audit[table].extend(f"{seq} {digest.hex()} {_b64(data)}\n" for seq, digest, data in rows)

    def _audit_rows(self, table: str, after: int, limit: int) -> list:
        with self._reading():
            tx = self._tx if self._depth else None
            if tx and tx.audit_cut is not None:
                after = max(after, tx.audit_cut - (table == "checkpoints"))
            lines = self._log_lines_after(after, self.root / AUDIT_FILES[table], limit)
            if tx:
                lines += [line for line in tx.audit[table] if int(line.split(" ", 1)[0]) > after]
            return [_audit_row(line) for line in lines[:limit]]

    def _audit_delete(self, through: int) -> int:
        before = len(self._audit_rows("records", -1, 1 << 62))
        self._tx.audit_cut = through if self._tx.audit_cut is None else max(through, self._tx.audit_cut)
        return before - len(self._audit_rows("records", -1, 1 << 62))

    def close(self) -> None:
        with self._lock:
            super().close()
            if self._fd is not None and self._pid == os.getpid() and not self._depth:
                os.close(self._fd)
                self._fd = None


def _audit_row(line: str) -> tuple:
    seq, digest, data = line.split()
    return int(seq), bytes.fromhex(digest), _unb64(data)


def _entry_of(saved) -> Entry | None:
    """An index entry as current.json keeps it: [class, label, id (base64 or null), key type, private]."""
    try:
        cls, label, cka_id, key_type, private = saved
        if type(cls) is int and (key_type is None or type(key_type) is int):
            return Entry(cls, None if label is None else _unb64(label), None if cka_id is None else _unb64(cka_id),
                         key_type, private is True)
    except (TypeError, ValueError):
        pass
    return None          # none kept (or damaged): the record is read to list the object


class FilesystemCatalog(Catalog):
    """A directory holding one directory per token, `token-<creation time ns>-<random>.d`."""

    PATTERN = "token-*.d"

    def __init__(self, directory, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        self.directory = Path(directory)
        self._args = (max_pin_failures, pin_policy)
        self._known: set[str] = set()      # names seen initialized (a token stays so)
        self._lock = threading.Lock()
        files.private_dir(self.directory)

    def names(self) -> list:
        with self._lock:
            for path in self.directory.glob(self.PATTERN):
                if path.name not in self._known and path.is_dir():
                    store = self.open(path.name)
                    try:
                        if store.initialized():
                            self._known.add(path.name)
                    except PKCS11Error as err:    # e.g. a directory from a newer release
                        LOG.warning("token directory %s not served: %s", path, err.reason)
                    finally:
                        store.close()
            return sorted(self._known)

    def open(self, name: str) -> FilesystemStore:
        return FilesystemStore(self.directory / name, *self._args)

    def new(self) -> tuple:
        name = f"token-{time.time_ns():020d}-{os.urandom(4).hex()}.d"
        return name, self.open(name)

    def discard(self, name: str) -> None:
        with self._lock:
            self._known.discard(name)
        shutil.rmtree(self.directory / name, ignore_errors=True)
