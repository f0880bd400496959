"""A TokenStore in memory, with the same semantics as the others (all of it lives
in sealing.SealingStore); for engine unit tests and `[store] kind = "memory"`
(tokens that last as long as the process).

Two MemoryStore objects given the same `data` behave like two processes sharing
one token: each sees the other's writes through changes(), and a write
transaction holds the data's lock and is undone whole if it fails."""

import bisect
import copy
import threading
from contextlib import contextmanager

from .. import constants as C
from ..errors import PKCS11Error
from .base import Catalog
from .sealing import AUDIT_TABLES, PinPolicy, SealingStore


def new_data() -> dict:
    """The shared state: token record (None until initialized), objects
    (uid -> [version, lineage, seq, record, tag]), tombstones (uid -> seq), counters,
    audit (table -> [(seq, digest, data)] in seq order)."""
    return {"token": None, "objects": {}, "tombstones": {}, "counters": {},
            "audit": {table: [] for table in AUDIT_TABLES}, "lock": threading.RLock(), "depth": 0}


class MemoryStore(SealingStore):
    def __init__(self, data: dict | None = None, max_pin_failures: int = 10,
                 pin_policy: PinPolicy = PinPolicy()):
        super().__init__(max_pin_failures, pin_policy)
        self.data = new_data() if data is None else data

    def _exists(self) -> bool:
        return self.data["token"] is not None

    def _create(self, fields: dict) -> None:
        with self.data["lock"]:
            self.data.update({k: v for k, v in new_data().items() if k not in ("lock", "depth")},
                             token=dict(fields))

    @contextmanager
    def _write(self):
        data = self.data
        with data["lock"]:
            if data["depth"]:
                data["depth"] += 1
                try:
                    yield
                finally:
                    data["depth"] -= 1
                return
            saved = {k: copy.copy(data[k]) for k in ("token", "objects", "tombstones", "counters")}  # O(n): tests
            saved["audit"] = {table: list(rows) for table, rows in data["audit"].items()}
            data["depth"] = 1
            try:
                yield
            except BaseException:
                data.update(saved)
                raise
            finally:
                data["depth"] = 0

    def _token(self) -> dict:
        if self.data["token"] is None:
            raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
        return dict(self.data["token"])

    def _update(self, fields: dict) -> None:
        self.data["token"].update(fields)

    def _next_seq(self) -> int:
        self.data["token"]["seq"] += 1
        return self.data["token"]["seq"]

    def _row(self, uid: str) -> tuple | None:
        row = self.data["objects"].get(uid)
        return None if row is None else (row[0], row[1])

    def _tombstoned(self, uid: str) -> bool:
        return uid in self.data["tombstones"]

    def _put(self, uid: str, version: int, record: bytes, tag: bytes, lineage: str) -> None:
        self.data["objects"][uid] = [version, lineage, self._next_seq(), record, tag]

    def _delete(self, uid: str) -> None:
        del self.data["objects"][uid]
        self.data["tombstones"][uid] = self._next_seq()

    def _uids(self) -> list:
        return list(self.data["objects"])

    def _prune(self, upto: int) -> None:
        stones = self.data["tombstones"]
        for uid in [u for u, seq in stones.items() if seq <= upto]:
            del stones[uid]

    def _head(self) -> tuple:
        tok = self._token()
        return tok["seq"], tok["epoch"]

    def _since(self, cursor) -> tuple:
        with self.data["lock"]:
            floor = -1 if cursor is None else cursor
            rows = [(uid, version, rec, tag) for uid, (version, _, seq, rec, tag) in self.data["objects"].items()
                     if seq > floor]
            gone = [] if cursor is None else [u for u, s in self.data["tombstones"].items() if s > floor]
            return self._token(), rows, gone

    def _counter(self, name: str) -> int | None:
        return self.data["counters"].get(name)

    def _set_counter(self, name: str, value: int) -> None:
        self.data["counters"][name] = value

    def _audit_last(self, table: str) -> tuple | None:
        rows = self.data["audit"][table]
        return rows[-1][:2] if rows else None

    def _audit_put(self, table: str, rows: list) -> None:
        self.data["audit"][table].extend(rows)

    def _audit_rows(self, table: str, after: int, limit: int) -> list:
        with self.data["lock"]:
            rows = self.data["audit"][table]
            start = bisect.bisect_right(rows, after, key=lambda r: r[0])
            return rows[start:start + limit]

    def _audit_delete(self, through: int) -> int:
        audit = self.data["audit"]
        records = audit["records"]
        cut = bisect.bisect_right(records, through, key=lambda r: r[0])
        audit["records"] = records[cut:]
        audit["checkpoints"] = [r for r in audit["checkpoints"] if r[0] >= through]
        return cut


class MemoryCatalog(Catalog):
    """Tokens that live as long as the process: `[store] kind = "memory"`."""

    def __init__(self, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        self._args = (max_pin_failures, pin_policy)
        self._tokens: dict[str, dict] = {}

    def names(self) -> list:
        return [name for name, data in self._tokens.items() if data["token"] is not None]

    def open(self, name: str) -> MemoryStore:
        return MemoryStore(self._tokens[name], *self._args)

    def new(self) -> tuple:
        name = f"memory-{len(self._tokens) + 1:06d}"
        self._tokens[name] = new_data()
        return name, self.open(name)

    def discard(self, name: str) -> None:
        self._tokens.pop(name, None)
