"""The shim's side of the native fast path (native/, issue 4): AES-GCM, and ECDSA signing.

After the engine accepted an encrypt, decrypt, message or sign init, `hand_over` asks
it for the operation (Library.offload_grant) and arms native state with it; the
engine then forgets the operation (Library.release). From then on the session's
operation of that kind lives in native code only, and the C entry points answer
without Python. A `Binding` is what the engine calls to drop native state
(key destroyed or changed, session closed, logout, PIN locked, C_Finalize).
All of this runs under the lock of the session's token (Library._lock_of), so arming and
dropping are ordered.
What is armed holds a lease (native/ferro_native.h FERRO_LEASE_NS): when it
runs out, a repeat init comes back here, and an armed operation asks the
engine to recheck its key first (`ferro_py_recheck` -> Library.recheck).
Each loaded copy of the .so has its own native tables: a copy's `Binding` is
what its libraries' `offload` is, and every call here goes through it.

FERROHSM_NATIVE=0 in the environment keeps every operation in Python (the tests
use it to compare the two paths byte for byte).

Governed keys (issue 12): their `*Init` passed the gate (and wrote its audit record)
before anything is armed; what native code then runs on the grant is counted in C
(a `uses` counter per cache entry, ended entries' counts kept in a pending table) and
recorded here, one audit record per (key version, use) and flush, through
gate.record_count. `Counts` flushes when the engine ends native state (a session
closed or logged out, a key dropped, C_Finalize: synchronously, under the token's
lock) and from a daemon thread every REPORT_SECONDS while a governed grant lives. A
thread, not the lease recheck: a recheck runs only when the client calls again, so an
idle context's counts would wait; the thread takes the same locks as C_Finalize (the
library's every lock, in its order), only when a grant lives, and stops at C_Finalize,
which makes the last flush itself. Fail closed: a count whose record cannot be written
drops the key's native state (`ferro_native_drop_key`, CKR_FUNCTION_FAILED), so its
next use goes through the engine, whose gate fails there too.
"""

import itertools
import os
import threading

from provider import constants as C
from provider import gate
from provider.errors import PKCS11Error
from provider.log import LOG

from .handlers_common import onerror, wrap

# operation kind -> the native table's index (native/ferro_native.h)
KINDS = {"encrypt": 0, "decrypt": 1, "message_encrypt": 2, "message_decrypt": 3, "sign": 4}


REPORT_SECONDS = 0.5        # a live governed grant's counts are recorded at least this often (x2)
COLLECT_ROWS = 5 * 4096 + 1024   # every cache entry (FERRO_SLOTS x FERRO_KINDS) + FERRO_PENDING


class Counts:
    """The governed grants one loaded copy armed (grant id -> gate.Counted), the counts
    collected from C and not yet recorded, and the reporter thread."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.ids = itertools.count(1)
        self.grants: dict[int, gate.Counted] = {}
        self.by_use: dict[tuple, int] = {}         # (session, kind, Counted) -> its grant id
        self.uses: dict[int, tuple] = {}           # and back
        self.unrecorded: dict[int, int] = {}      # grant id -> uses collected, not yet recorded
        self.arming: set[int] = set()             # added, not yet armed in C (not "ended" meanwhile)
        self.ended: list[int] = []
        self.lock = threading.Lock()              # the dicts and the C collection; never held over a record
        self.rows = ffi.new("struct ferro_count[]", COLLECT_ROWS)
        self.lost = ffi.new("uint64_t *")
        self.library = None
        self.stop = None
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A forked child: the parent's grants and counts are the parent's to record
        (native/slots.c wipes the child's tables; its reporter thread did not fork)."""
        self.lock = threading.Lock()          # (another thread may have held it at fork)
        self._reset()

    def _reset(self) -> None:
        self.grants.clear()
        self.by_use.clear()
        self.uses.clear()
        self.unrecorded.clear()
        self.arming.clear()
        self.library = self.stop = None

    def add(self, library, session: int, kind: str, what: gate.Counted) -> int:
        """The id of a governed grant (the engine's lock held): the one this session's
        `kind` already has for the same use, if it still lives (its counts go on, and
        C keeps one row for it however often the client inits), else a new one.
        Starts the reporter."""
        with self.lock:
            use = (session, kind, what)
            grant = self.by_use.get(use)
            if grant is None:
                grant = self.by_use[use] = next(self.ids)
                self.grants[grant] = what
                self.uses[grant] = use
            self.arming.add(grant)
            if self.stop is None or self.library is not library:
                self.library, self.stop = library, threading.Event()
                threading.Thread(target=self._report, args=(library, self.stop), daemon=True,
                                 name="ferrohsm-native-counts").start()
        return grant

    def armed(self, grant: int) -> None:
        """C was asked to arm `grant` (whether it did or not)."""
        with self.lock:
            self.arming.discard(grant)

    def _collect(self) -> None:
        """Take C's counts (self.lock held): ended grants leave `grants` once recorded."""
        n = self.lib.ferro_native_collect(self.rows, COLLECT_ROWS, self.lost)
        live = set()
        for row in self.rows[0:n]:
            if row.live:
                live.add(row.grant)
            if row.uses:
                self.unrecorded[row.grant] = self.unrecorded.get(row.grant, 0) + row.uses
        self.ended = [g for g in self.grants if g not in live and g not in self.arming]
        if self.lost[0]:
            LOG.error("native fast path: %d uses of governed keys could not be counted: "
                      "native state dropped", self.lost[0])
            self.lib.ferro_native_drop_all()

    def flush(self, held_only: bool = True, hold: bool = True) -> None:
        """Record what C counted: every group whose token this thread may write now
        (its lock held, no store transaction open: else it waits for the next flush).
        `hold`: keep the token's lock while writing (the engine is in the middle of a
        change: a session closing, a key dropped, C_Finalize), else let it go meanwhile."""
        if not self.grants:
            return
        with self.lock:
            self._collect()
            groups: dict[tuple, list] = {}
            for grant, uses in list(self.unrecorded.items()):
                what = self.grants.get(grant)
                if what is None:          # (cannot happen: a grant stays until its uses are recorded)
                    LOG.error("native fast path: %d uses of an unknown grant %d", uses, grant)
                    del self.unrecorded[grant]
                    continue
                if held_only and not _writable(what.token):
                    continue
                del self.unrecorded[grant]
                key = (id(what.token), what.key_id, what.key_version, what.action, what.principal)
                groups.setdefault(key, [what, 0])[1] += uses
            for grant in self.ended:
                if grant not in self.unrecorded:
                    self.grants.pop(grant, None)
                    self.by_use.pop(self.uses.pop(grant, None), None)
        for what, uses in groups.values():
            try:
                gate.record_count(what, uses, hold=hold)
            except PKCS11Error:
                LOG.error("native fast path: %d uses of key %s v%d not recorded: its native use stops",
                          uses, what.key_id, what.key_version)
                self.lib.ferro_native_drop_key(what.handle, C.CKR_FUNCTION_FAILED)

    def _report(self, library, stop: threading.Event) -> None:
        while not stop.wait(REPORT_SECONDS):
            if not self.grants:
                continue
            try:
                with library._every_lock():          # C_Finalize's locks, in its order
                    if not stop.is_set():
                        self.flush(hold=False)
            except Exception:     # noqa: BLE001 - the host must not see the reporter fail
                LOG.exception("native fast path: counts not flushed")

    def finish(self) -> None:
        """C_Finalize (every lock held, native state dropped): the last flush, the reporter stops."""
        if self.stop is not None:
            self.stop.set()
        self.flush(held_only=False)
        with self.lock:
            for grant in self.unrecorded:
                LOG.error("native fast path: %d uses of grant %d not recorded at C_Finalize",
                          self.unrecorded[grant], grant)
        self._reset()


def _writable(token) -> bool:
    return token.lock._is_owned() and not token.in_transaction


class Binding:
    """One loaded copy's native side (its own native/slots.c tables), and the
    provider.session.Offload its libraries drop native state through. Each drop
    records the governed uses it ended (Counts.flush)."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.enabled = os.environ.get("FERROHSM_NATIVE", "1") != "0"
        self.counts = Counts(ffi, lib)

    def drop_session(self, handle: int) -> None:
        self.lib.ferro_native_drop_session(handle)
        self.counts.flush()

    def drop_key(self, handle: int, rv: int) -> None:
        self.lib.ferro_native_drop_key(handle, rv)
        self.counts.flush()

    def drop_all(self) -> None:
        self.lib.ferro_native_drop_all()
        self.counts.finish()


def bind(ffi, lib, state) -> Binding:
    """The native side of the copy whose ffi/lib these are; `state` is its State."""
    binding = Binding(ffi, lib)
    lib.ferro_native_enabled = int(binding.enabled)

    def reserve_iv(library, session, key, p_start, p_count, p_salt):
        p_start[0], p_count[0], p_salt[0] = library.reserve_iv(session, key)

    def recheck(library, session, key):
        library.recheck(session, key)

    # through the handlers' wrapper: this copy's NOT_INITIALIZED, PKCS11Error -> its rv
    for name, fn in (("ferro_py_reserve_iv", reserve_iv), ("ferro_py_recheck", recheck)):
        ffi.def_extern(name=name, onerror=onerror)(wrap(name, fn, True, state))
    return binding


def attach(library, binding: Binding) -> None:
    """A new Library (C_Initialize) of the copy `binding` belongs to: let it drop native state."""
    if binding.enabled:
        library.offload = binding


def _native(library, kind: str):
    """The library's copy's Binding if `kind` may run natively there, else None."""
    binding = library.offload
    return binding if isinstance(binding, Binding) and kind in KINDS else None


def forget(library, session: int, kind: str) -> None:
    """The engine runs an init of `kind` itself: the cached native authorisation
    for it goes (so a later native init cannot pass over the engine's operation).
    The engine's init checks the store's head (as every key use does), so what it
    then arms here, with a fresh lease, includes other processes' changes: a
    native repeat init whose lease ran out comes this way."""
    if binding := _native(library, kind):
        binding.lib.ferro_native_forget(session, KINDS[kind])


def hand_over(library, session: int, kind: str) -> None:
    """Move the operation the engine just started to native code, if it may go."""
    binding = _native(library, kind)
    if binding is None:
        return
    grant = library.offload_grant(session, kind)
    if grant is None:
        return
    counted = library.count_target(session, kind)
    counter = binding.counts.add(library, session, kind, counted) if counted is not None else 0
    ffi, lib = binding.ffi, binding.lib
    lib.ferro_max_data_len = library.config.limits.max_data_len   # the engine's cap, natively too
    if kind == "sign":
        key, value, params = grant
        armed = lib.ferro_native_arm_sign(session, key, ffi.from_buffer(value), len(value),
                                          ffi.from_buffer(params), len(params), counter)
    else:
        key, value, iv, aad, tag_len = grant
        armed = lib.ferro_native_arm(session, KINDS[kind], key, ffi.from_buffer(value), len(value),
                                     ffi.from_buffer(iv) if iv else ffi.NULL, len(iv),
                                     ffi.from_buffer(aad) if aad else ffi.NULL, len(aad), tag_len, counter)
    if counter:
        binding.counts.armed(counter)
    if armed == 0:
        library.release(session, kind)


def cancel(library, session: int, kind: str) -> None:
    if binding := _native(library, kind):
        binding.lib.ferro_native_cancel(session, KINDS[kind])
