"""Slot events for C_WaitForSlotEvent.

An event is a slot whose token presence or token identity changed: a slot that
appeared or went away, a token created or initialised (by this process or by
another one: tokens are files in the token directory), a backend-backed token
coming or going (CKF_TOKEN_PRESENT in its slot info). The library hands us a
snapshot {slot_id: (present, label, serial)}; `update` compares it with the
last one and queues the slots that differ, each once, in slot order. The first
snapshot is taken at C_Initialize, so an event is "since C_Initialize or the
last C_WaitForSlotEvent that returned it".

A blocking wait polls every POLL_INTERVAL seconds and sleeps on a
threading.Event in between, holding neither the library's lock (the poll takes
it briefly) nor the GIL; `close` (C_Finalize) sets the Event, and every waiter
then answers CKR_CRYPTOKI_NOT_INITIALIZED, as the spec says for a
C_WaitForSlotEvent in progress when C_Finalize is called.
"""

import threading

from . import constants as C
from .errors import PKCS11Error

POLL_INTERVAL = 0.2     # seconds between polls of a blocking wait


class SlotEvents:
    def __init__(self, snapshot: dict):
        self._seen = snapshot
        self._pending: list[int] = []
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def update(self, snapshot: dict) -> int | None:
        """Take a fresh snapshot; the next slot with an unreported event, or None."""
        for slot in sorted(set(snapshot) | set(self._seen)):
            if snapshot.get(slot) != self._seen.get(slot) and slot not in self._pending:
                self._pending.append(slot)
        self._seen = snapshot
        return self._pending.pop(0) if self._pending else None

    def wait(self, poll, block: bool) -> int:
        """The slot of the next event. `poll()` returns a slot or None (it takes
        the library's lock itself). Without `block`, no event is CKR_NO_EVENT."""
        while True:
            if self.closed:
                raise PKCS11Error(C.CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize during C_WaitForSlotEvent")
            slot = poll()
            if slot is not None:
                return slot
            if not block:
                raise PKCS11Error(C.CKR_NO_EVENT)
            self._closed.wait(POLL_INTERVAL)

    def close(self) -> None:
        self._closed.set()
