"""A TokenStore in memory, with the same semantics as the SQLite one (all of it
lives in sealing.SealingStore); for engine unit tests.

Two MemoryStore objects given the same `data` behave like two processes sharing
one token file: each sees the other's writes through changes()."""

from contextlib import contextmanager

from .. import constants as C
from ..errors import PKCS11Error
from .sealing import KDF_ITERATIONS, SealingStore


def new_data() -> dict:
    """The shared state: token record (None until initialized), objects, tombstones."""
    return {"token": None, "objects": {}, "tombstones": {}}


class MemoryStore(SealingStore):
    def __init__(self, data: dict | None = None, max_pin_failures: int = 10,
                 kdf_iterations: int = KDF_ITERATIONS):
        super().__init__(max_pin_failures, kdf_iterations)
        self.data = new_data() if data is None else data

    def _exists(self) -> bool:
        return self.data["token"] is not None

    def _create(self, fields: dict) -> None:
        self.data.update(new_data(), token=dict(fields))

    @contextmanager
    def _write(self):
        with self._lock:
            yield

    def _token(self) -> dict:
        if self.data["token"] is None:
            raise PKCS11Error(C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
        return dict(self.data["token"])

    def _update(self, fields: dict) -> None:
        self.data["token"].update(fields)

    def _next_seq(self) -> int:
        self.data["token"]["seq"] += 1
        return self.data["token"]["seq"]

    def _put(self, uid: str, record: bytes, tag: bytes) -> None:
        self.data["tombstones"].pop(uid, None)
        self.data["objects"][uid] = (self._next_seq(), record, tag)

    def _delete(self, uid: str) -> None:
        if self.data["objects"].pop(uid, None) is not None:
            self.data["tombstones"][uid] = self._next_seq()

    def _wipe(self) -> None:
        for uid in list(self.data["objects"]):
            self._delete(uid)

    def _head(self) -> tuple:
        tok = self._token()
        return tok["seq"], tok["epoch"]

    def _since(self, cursor) -> tuple:
        floor = -1 if cursor is None else cursor
        rows = [(uid, rec, tag) for uid, (seq, rec, tag) in self.data["objects"].items() if seq > floor]
        gone = [] if cursor is None else [u for u, s in self.data["tombstones"].items() if s > floor]
        return self._token(), rows, gone
