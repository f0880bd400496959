"""The audit log of one token: records appended to the token's store (and an optional
JSON-lines file), chained and MACed (record.py), checkpointed and signed
(checkpoint.py), pruned with an anchor.

record(event) returns once the record is durable (its store transaction committed:
SQLite's synchronous=FULL commit, the filesystem store's journal, PostgreSQL's
commit). Group commit: callers that arrive while a commit runs queue up; the next
commit takes the whole queue in one store transaction (one fsync), and each caller
returns when the commit that holds its own record is done, with its receipt.
record_in(event) appends inside the caller's open store transaction instead, so the
change and its record commit together (governance's transitions do that).
submit(event) queues the record without waiting and returns a Future that is resolved
when it is durable (or fails with AuditUnavailable): for a caller that must not block
(the service's event loop), which holds its answer back until then. A writer thread,
started at the first submit and ending after WRITER_IDLE seconds without one, commits
the queue when no record() caller is doing so.

Fail closed: if the record cannot be made durable - the store refuses or fails the
write, the file sink cannot be written - record() raises AuditUnavailable and nothing
of it stays: the transaction is rolled back and the file cut back to where it was.
(The caller then does not run the operation: CKR_FUNCTION_FAILED, HTTP 503.)

The file sink is a copy of the store's records, in export form (record.line_of),
brought up to date inside each record() commit (records record_in wrote in other
transactions are copied by the next one, or by flush()): it never holds a record the
store does not, and it is fsynced before the commit.

Checkpoints are made by checkpoint() - called by the Checkpointer thread every
`checkpoint_seconds`, or as soon as `checkpoint_every` records were written since the
last - never inside record(): signing needs the token's key, and a record() may run
under the token's lock.
"""

import json
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from ..log import LOG
from ..store.base import Conflict
from . import checkpoint as cp_mod
from . import merkle, verifier
from .record import MAC_LEN, Event, body_of, chain, line_of, mac_of, parse_line, time_text

APPEND_TRIES = 5
READ_CHUNK = 10_000
WRITER_IDLE = 2.0            # seconds without a submit() before the writer thread ends


class AuditUnavailable(Exception):
    """The record could not be made durable: the operation must not run."""


@dataclass(frozen=True)
class Receipt:
    seq: int
    digest: bytes


class _Slot:
    __slots__ = ("event", "receipt", "error", "done", "future")

    def __init__(self, event: Event, future: Future | None = None):
        self.event, self.receipt, self.error, self.done, self.future = event, None, None, False, future

    def finish(self) -> None:
        self.done = True
        if self.future is not None:
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.receipt)


class FileSink:
    """The JSON-lines copy of the records (`[audit] file`), one export line each."""

    def __init__(self, path):
        self.path = str(path)

    def _tail(self, f) -> int:
        """The seq of the file's last line (0: empty); a torn last line is cut off."""
        end = f.seek(0, os.SEEK_END)
        pos, tail = end, b""
        while pos > 0 and tail.count(b"\n") < 2:
            pos = max(0, pos - 65536)
            f.seek(pos)
            tail = f.read(end - pos)
        if tail and not tail.endswith(b"\n"):            # a writer died mid-line
            cut = tail.rfind(b"\n") + 1
            f.truncate(pos + cut)
            tail = tail[:cut]
        lines = tail.splitlines()
        if not lines:
            return 0
        return json.loads(parse_line(lines[-1])[1])["seq"]

    def catch_up(self, store) -> None:
        """Append the store's records after the file's last one (inside the store's write
        transaction: the store's own uncommitted rows included), fsynced; on failure the
        file is cut back and the error raised."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as f:
            last = self._tail(f)
            size = f.seek(0, os.SEEK_END)
            head = store.audit_head()[0]
            if last > head:                   # lines of a commit that failed after writing them
                self._trim(f, head)
                last, size = head, f.seek(0, os.SEEK_END)
            try:
                while last < head:
                    rows = store.audit_read(last, READ_CHUNK)
                    if not rows:
                        break
                    f.write(b"".join(line_of(data[:MAC_LEN], data[MAC_LEN:]) for _, _, data in rows))
                    last = rows[-1][0]
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                try:
                    f.truncate(size)
                except OSError:
                    pass
                raise

    def _trim(self, f, head: int) -> None:
        f.seek(0)
        keep = 0
        while True:
            line = f.readline()
            if not line or json.loads(parse_line(line)[1])["seq"] > head:
                break
            keep = f.tell()
        f.truncate(keep)


class Audit:
    """The audit log of `store` (a TokenStore). `hmac_key`: the records' MAC key
    (config.audit_hmac_key). `signer`: a checkpoint.Signer, or a callable giving one
    at first need (checkpoint.token_signer over the token)."""

    def __init__(self, store, hmac_key: bytes, signer=None, file=None, checkpoint_file=None,
                 checkpoint_every: int = 10_000, checkpoint_seconds: float = 60.0, writer=None):
        if len(hmac_key) < 16:
            raise ValueError("the audit HMAC key must be at least 16 bytes")
        self.store = store
        # record()'s own store object on the same token (its own connection): its commits
        # then do not hold up the token's reads (head checks) of the threads that queue
        # behind them, so they queue here and share the next commit
        self.writer = writer or store
        self._key = hmac_key
        self._signer = signer
        self.sink = FileSink(file) if file else None
        self.checkpoint_file = str(checkpoint_file) if checkpoint_file else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._cv = threading.Condition()
        self._queue: list = []
        self._leader = False
        self._writer = None             # the submit() queue's writer thread, while it runs
        self._cp_lock = threading.Lock()
        self._cp_seen = None            # the last checkpoint made or read here
        self.due = threading.Event()    # checkpoint_every records since the last checkpoint
        self.commits = 0                # store transactions record() ran (group commit's measure)
        self.records = 0

    # --- writing ---------------------------------------------------------------------
    def record(self, event: Event) -> Receipt:
        """Append `event` in a store transaction of its own (shared with the callers
        that queue meanwhile); returns once it is durable, or raises AuditUnavailable.
        Not inside an open store transaction (the commit it waits for would wait for
        that transaction): there, record_in."""
        slot = _Slot(event)
        with self._cv:
            self._queue.append(slot)
            while not slot.done:
                if self._leader:
                    self._cv.wait()
                    continue
                self._leader = True
                batch, self._queue = self._queue, []
                self._cv.release()
                try:
                    self._commit(batch)
                finally:
                    self._cv.acquire()
                    self._leader = False
                    self._cv.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.receipt

    def submit(self, event: Event) -> Future:
        """Queue `event` for the next commit; the Future gives its Receipt once it is
        durable, or raises AuditUnavailable."""
        slot = _Slot(event, Future())
        with self._cv:
            self._queue.append(slot)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="ferrohsm-audit-writer", daemon=True)
                self._writer.start()
            self._cv.notify_all()
        return slot.future

    def _write(self) -> None:
        """The writer thread: commits the queue whenever no record() caller leads."""
        with self._cv:
            while True:
                if not self._queue or self._leader:
                    if not self._cv.wait(WRITER_IDLE) and not self._queue:
                        self._writer = None
                        return
                    continue
                self._leader = True
                batch, self._queue = self._queue, []
                self._cv.release()
                try:
                    self._commit(batch)
                finally:
                    self._cv.acquire()
                    self._leader = False
                    self._cv.notify_all()

    def _commit(self, batch: list) -> None:
        try:
            for attempt in range(APPEND_TRIES):
                try:
                    with self.writer.transaction():
                        receipts = self._append([s.event for s in batch], self.writer)
                        if self.sink is not None:
                            self.sink.catch_up(self.writer)
                    break
                except Conflict:             # another process appended between head and write
                    if attempt == APPEND_TRIES - 1:
                        raise
            for slot, receipt in zip(batch, receipts):
                slot.receipt = receipt
            self.commits += 1
            self.records += len(batch)
            self._note(receipts[-1].seq)
        except Exception as exc:        # noqa: BLE001 - whatever the sink's failure, fail closed
            LOG.error("audit record not durable: %s: %s", type(exc).__name__, exc)
            error = AuditUnavailable(f"the audit record could not be made durable ({type(exc).__name__})")
            for slot in batch:
                slot.error = error
        finally:
            for slot in batch:
                slot.finish()

    def record_in(self, event: Event) -> Receipt:
        """Append inside the caller's open store transaction (durable when it commits).
        A store failure raises AuditUnavailable; the caller's transaction then rolls back."""
        try:
            with self.store.transaction():
                receipt = self._append([event])[0]
        except Conflict:
            raise
        except Exception as exc:        # noqa: BLE001
            LOG.error("audit record not written: %s: %s", type(exc).__name__, exc)
            raise AuditUnavailable(f"the audit record could not be written ({type(exc).__name__})") from None
        self._note(receipt.seq)
        return receipt

    def _append(self, events: list, store=None) -> list:
        """In the open transaction: chain the events after the store's head, append."""
        store = store or self.store
        seq, prev = store.audit_head()
        prev = prev or bytes(32)
        rows, receipts = [], []
        now = time.time_ns()
        for event in events:
            seq += 1
            body = body_of(event, seq, prev, now)
            prev = chain(prev, body)
            rows.append((seq, prev, mac_of(self._key, prev) + body))
            receipts.append(Receipt(seq, prev))
        store.audit_append(rows)
        return receipts

    def _note(self, seq: int) -> None:
        seen = self._cp_seen.seq if self._cp_seen else 0
        if seq - seen >= self.checkpoint_every:
            self.due.set()

    def flush(self) -> None:
        """Bring the file sink up to the store (records record_in wrote)."""
        if self.sink is not None:
            with self.store.transaction():
                self.sink.catch_up(self.store)

    def verify(self, records, checkpoints: list, public_key: bytes | None):
        """verifier.verify over `records` with this log's own HMAC key (the key stays here)."""
        return verifier.verify(records, checkpoints, public_key, self._key)

    # --- checkpoints ---------------------------------------------------------------------
    def signer(self):
        if self._signer is not None and not isinstance(self._signer, cp_mod.Signer):
            self._signer = self._signer()
        if self._signer is None:
            raise AuditUnavailable("no checkpoint key")
        return self._signer

    def last_checkpoint(self):
        rows = self.store.audit_checkpoints(self._cp_seen.seq - 1 if self._cp_seen else -1)
        if rows:
            self._cp_seen = cp_mod.Checkpoint.from_row(rows[-1][2])
        return self._cp_seen

    def checkpoint(self, now_ns: int | None = None):
        """Sign a checkpoint at the log's head if records came since the last one; the
        Checkpoint made, or None. Written to the store and the checkpoint file."""
        with self._cp_lock:
            self.due.clear()
            last = self.last_checkpoint()
            seq = last.seq if last else 0
            frontier = last.frontier.copy() if last else merkle.Frontier()
            head = last.head if last else b""
            while True:
                rows = self.store.audit_read(seq, READ_CHUNK)
                if not rows:
                    break
                for s, digest, data in rows:
                    frontier.append(merkle.leaf_hash(data[MAC_LEN:]))
                    seq, head = s, digest
            if last is not None and seq == last.seq:
                return None
            if seq == 0:
                return None
            made = cp_mod.make(self.signer(), seq, head, frontier, time.time_ns() if now_ns is None else now_ns)
            try:
                self.store.audit_put_checkpoint(*made.row())
            except ValueError:              # another process checkpointed meanwhile
                return None
            self._cp_seen = made
            if self.checkpoint_file:
                fd = os.open(self.checkpoint_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, made.line())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return made

    # --- retention -------------------------------------------------------------------------
    def prune(self, retention_days: float, now_ns: int | None = None) -> int:
        """Delete the records older than `retention_days`, cutting at the latest
        checkpoint whose record is older (the anchor the rest verifies from); the number
        of records deleted. A fresh checkpoint is made first, so the cut can reach the
        head."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - int(retention_days * 86400e9)
        cutoff_text = time_text(cutoff)
        self.checkpoint(now_ns)
        through = 0
        first = self.store.audit_read(-1, 1)
        start = first[0][0] if first else 0
        for seq, _, _ in self.store.audit_checkpoints(start - 1):
            row = self.store.audit_read(seq - 1, 1)
            if not row or row[0][0] != seq:
                continue
            if json.loads(row[0][2][MAC_LEN:])["time"] < cutoff_text:
                through = seq
            else:
                break
        if through < start:
            return 0
        deleted = self.store.audit_prune(through)
        LOG.info("audit: %d records pruned through %d (older than %s days)", deleted, through, retention_days)
        return deleted


class Checkpointer(threading.Thread):
    """Calls audit.checkpoint() every `interval` seconds, and at once when
    checkpoint_every records came; errors are logged and tried again."""

    def __init__(self, audit: Audit, interval: float | None = None):
        super().__init__(name="ferrohsm-audit-checkpointer", daemon=True)
        self.audit = audit
        self.interval = audit.checkpoint_seconds if interval is None else interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.audit.due.wait(self.interval)
            if self._halt.is_set():
                break
            try:
                self.audit.checkpoint()
            except Exception as exc:      # noqa: BLE001 - the next round tries again
                LOG.error("audit checkpoint failed: %s: %s", type(exc).__name__, exc)
                self._halt.wait(min(self.interval, 5.0))

    def stop(self) -> None:
        self._halt.set()
        self.audit.due.set()
        self.join()
