"""The token engine's front door: one `Library` per C_Initialize.

Its methods mirror the PKCS#11 functions with Python values (ints for handles,
bytes for PINs and data, lists of (type, raw bytes) for templates) and raise
PKCS11Error. This module holds the general, slot and token, session and login
functions; objects, cryptographic operations and key management are mixins in
fn_objects, fn_crypto and fn_keys.

Locks: each token has its own (Token.lock); a public method taking a session
handle or a slot runs under that token's lock, so threads on two tokens never wait
for each other. The library's own lock guards only the slot table (scan, the free
slot, C_Finalize). Order: a token's lock before the library's, never the other way.
Slow work inside a call (PIN key derivation, key pair generation, every device
call) runs with the token's lock let go (Token.let_go); what it decided on is
checked again when the lock is back.

Slots: one per token the store's catalog lists (store/base.Catalog), in order of
creation, plus always one free slot whose token is uninitialized (as SoftHSM2
does); C_InitToken on it creates a new token and a new free slot appears.
"""

import contextlib
import functools
import inspect
import itertools
import os
import threading

from . import constants as C
from . import files, log
from .audit import open_audit
from .backends.engine import Backends
from .config import Config
from .errors import PKCS11Error
from .fn_crypto import CryptoFunctions
from .fn_keys import KeyFunctions
from .fn_backend import BackendFunctions
from .fn_objects import ObjectFunctions
from .log import LOG
from .mechanisms import registry
from .session import Offload, Session
from .slot_events import SlotEvents
from .store import open_catalog
from .store.anchor import make_anchor
from .store.base import Conflict
from .token import Token, require

VERSION = (0, 1)
MANUFACTURER = "FerroHSM"

# (session state) -> may C_InitPIN / C_SetPIN run, as the spec's tables say
PIN_USER_FOR_STATE = {
    C.CKS_RW_PUBLIC_SESSION: C.CKU_USER,
    C.CKS_RW_USER_FUNCTIONS: C.CKU_USER,
    C.CKS_RW_SO_FUNCTIONS: C.CKU_SO,
}


def synchronized(cls):
    """Run every public method of `cls` (its mixins' too) under the lock its first
    parameter names: a session `handle` or a `slot` -> that token's lock; none ->
    the library's lock; C_Finalize takes them all."""
    for name in dir(cls):
        fn = getattr(cls, name)
        if not name.startswith("_") and callable(fn):
            setattr(cls, name, _locked(fn))
    return cls


def _locked(fn):
    params = list(inspect.signature(fn).parameters)[1:2]
    pick = {"handle": "_lock_of", "slot": "_slot_lock"}.get(params[0] if params else None)
    if fn.__name__ == "finalize":
        pick = "_every_lock"

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with (getattr(self, pick)(*args[:1]) if pick else self.lock):
            return retry(self, fn, args, kwargs)
    return wrapper


CONFLICT_TRIES = 5


def retry(library, fn, args, kwargs):
    """Run a Library function; if a compare-and-set write met another writer's newer
    version (store Conflict: nothing was written), take in the store's changes and run
    it again from the start, so every check is made again on the current object: the
    change is applied to the new version if it still may be, else the function gets
    the code the new state gives (a destroyed object: CKR_OBJECT_HANDLE_INVALID).
    The last try runs inside a store transaction of the token that holds the object:
    a store whose write transaction excludes other writers (SQLite's BEGIN IMMEDIATE,
    the filesystem store's flock) then reads and writes with nobody in between, so a
    writer that kept losing to others on a hot object still gets its turn (16 writers
    on 8 keys lost 5 times in a row about once in 3,000 writes:
    tests/e2e/test_two_processes.py, stress "hot")."""
    conflict = None
    for _ in range(CONFLICT_TRIES - 1):
        try:
            return fn(library, *args, **kwargs)
        except Conflict as exc:
            conflict = exc
            LOG.info("%s: object %s changed in the store meanwhile; again", fn.__name__, exc)
            for token in _holding(library, exc):    # (the token whose lock this call holds)
                token.refresh()
    try:
        with contextlib.ExitStack() as stack:
            for token in _holding(library, conflict):
                stack.enter_context(token.transaction())
                token.refresh()
            return fn(library, *args, **kwargs)
    except Conflict:
        raise PKCS11Error(C.CKR_FUNCTION_FAILED, "the object kept changing in the store") from None


def _holding(library, conflict) -> list:
    """The tokens that know the object `conflict` names (in slot order): the one the
    call works on, as a uid is one token's."""
    uid = conflict.args[0] if conflict.args else None
    return [library.tokens[slot] for slot in sorted(library.tokens)
            if library.tokens[slot].initialized and uid in library.tokens[slot].by_uid]


@synchronized
class Library(BackendFunctions, ObjectFunctions, CryptoFunctions, KeyFunctions):
    def __init__(self, config: Config | None = None):
        self.config = config or Config.load()
        log.configure(self.config.log_level, self.config.log_file)
        self.lock = threading.RLock()
        self.offload = Offload()           # the shim installs its native fast path here
        self.backends = Backends(self.config)   # device backends (backends/engine.py)
        self._handles = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._slot_ids = itertools.count(0)
        self.tokens: dict[int, Token] = {}
        self.names: dict[str, int] = {}        # catalog name -> slot
        self.sessions: dict[int, Session] = {}
        self.catalog = open_catalog(self.config)
        self.anchor = make_anchor(self.config, self.backends)   # [store] anchor, or none
        files.warn_if_shared(self.config.source, "configuration file")
        files.warn_if_shared(self.config.token_dir, "token directory")
        self._scan()
        self.free_slot = next(self._slot_ids)
        self.tokens[self.free_slot] = self._new_token(self.free_slot, None)
        self.slot_events = SlotEvents(self._slot_snapshot())

    def _new_token(self, slot: int, store) -> Token:
        if store is not None:
            store.anchor = self.anchor
        token = Token(slot, store, self._handles, on_change=self._object_changed)
        token.open_audit = lambda: self._open_audit(token)
        return token

    def _open_audit(self, token: Token):
        """The token's audit log; its record() commits through a store object of its own."""
        name = next((n for n, s in self.names.items() if s == token.slot_id), None)
        writer = None
        if name is not None:
            writer = self.catalog.open(name)
            writer.anchor = self.anchor
        return open_audit(self.config, token.store, token, writer)

    # --- locks ----------------------------------------------------------------
    def _lock_of(self, handle: int):
        """The lock of the token session `handle` is on (the library's if there is none:
        the call then fails on the handle)."""
        session = self.sessions.get(handle)
        return self.lock if session is None else session.token.lock

    def _slot_lock(self, slot: int):
        token = self.tokens.get(slot)
        return self.lock if token is None else token.lock

    @contextlib.contextmanager
    def _every_lock(self):
        with contextlib.ExitStack() as stack:
            for slot in sorted(self.tokens):
                stack.enter_context(self.tokens[slot].lock)
            stack.enter_context(self.lock)
            yield

    def _object_changed(self, obj) -> None:
        """An object left the index or changed: operations using it as their key end."""
        for session in list(self.sessions.values()):
            for kind, op in list(session.ops.items()):
                if op.key is obj:
                    session.fail(kind, C.CKR_KEY_HANDLE_INVALID)
        self.offload.drop_key(obj.handle, C.CKR_KEY_HANDLE_INVALID)

    def _scan(self) -> None:
        """Add tokens that appeared in the store (made by any process)."""
        with self.lock:
            for name in self.catalog.names():
                if name not in self.names:
                    slot = next(self._slot_ids)
                    self.names[name] = slot
                    self.tokens[slot] = self._new_token(slot, self.catalog.open(name))

    def finalize(self) -> None:
        self.slot_events.close()           # wakes blocked C_WaitForSlotEvent calls
        self.offload.drop_all()
        self.sessions.clear()
        for token in self.tokens.values():
            token.close()
        self.tokens.clear()
        self.catalog.close()
        self.backends.close()

    # --- general ------------------------------------------------------------
    def get_info(self) -> dict:
        return dict(cryptoki_version=(3, 0), manufacturer_id=MANUFACTURER, flags=0,
                    library_description="FerroHSM PKCS#11 module", library_version=VERSION)

    # --- slots and tokens ---------------------------------------------------
    def _token(self, slot: int) -> Token:
        token = self.tokens.get(slot)
        require(token is not None, C.CKR_SLOT_ID_INVALID, f"slot {slot}")
        return token

    def get_slot_list(self, token_present: bool) -> list[int]:
        self._scan()
        return sorted(s for s in self.tokens if not token_present
                      or self._slot_flags(self.tokens[s]) & C.CKF_TOKEN_PRESENT)

    def _slot_flags(self, token) -> int:
        binding = self.backends.binding(token)
        return C.CKF_TOKEN_PRESENT if binding is None else binding.slot_flags()

    def _slot_snapshot(self) -> dict:
        """{slot: (token present, label, serial)}: what a slot event changes."""
        snapshot = {}
        for slot, token in self.tokens.items():
            present = bool(self._slot_flags(token) & C.CKF_TOKEN_PRESENT)
            label, serial = (token.store.label, token.store.serial) if token.initialized else (None, None)
            snapshot[slot] = (present, label, serial)
        return snapshot

    def poll_slot_event(self) -> int | None:
        """The next slot with an event since the last poll (slot_events), or None."""
        require(not self.slot_events.closed, C.CKR_CRYPTOKI_NOT_INITIALIZED)
        self._scan()
        return self.slot_events.update(self._slot_snapshot())

    def get_slot_info(self, slot: int) -> dict:
        token = self._token(slot)
        return dict(description=f"FerroHSM slot {slot}", manufacturer_id=MANUFACTURER,
                    flags=self._slot_flags(token), hardware_version=VERSION, firmware_version=VERSION)

    def get_token_info(self, slot: int) -> dict:
        token = self._token(slot)
        self.backends.require_present(token)
        sessions = [s for s in list(self.sessions.values()) if s.token is token]
        ready = token.initialized
        return dict(
            label=token.store.label if ready else b" " * 32,
            manufacturer_id=MANUFACTURER, model="FerroHSM soft",
            serial_number=token.store.serial if ready else "",
            flags=token.flags() | self.backends.pin_flags(token),
            max_session_count=C.CK_EFFECTIVELY_INFINITE, session_count=len(sessions),
            max_rw_session_count=C.CK_EFFECTIVELY_INFINITE,
            rw_session_count=sum(1 for s in sessions if s.rw),
            max_pin_len=self.config.pin_max, min_pin_len=self.config.pin_min,
            total_public_memory=C.CK_UNAVAILABLE_INFORMATION,
            free_public_memory=C.CK_UNAVAILABLE_INFORMATION,
            total_private_memory=C.CK_UNAVAILABLE_INFORMATION,
            free_private_memory=C.CK_UNAVAILABLE_INFORMATION,
            hardware_version=VERSION, firmware_version=VERSION, utc_time="")

    def get_mechanism_list(self, slot: int) -> list[int]:
        self._token(slot)
        return registry.all_mechanisms()

    def get_mechanism_info(self, slot: int, mech: int) -> tuple[int, int, int]:
        self._token(slot)
        entry = registry.get(mech)
        return entry.min_key, entry.max_key, entry.flags

    def _check_pin_len(self, pin: bytes) -> None:
        require(self.config.pin_min <= len(pin) <= self.config.pin_max, C.CKR_PIN_LEN_RANGE)

    def init_token(self, slot: int, so_pin: bytes, label: bytes) -> None:
        token = self._token(slot)
        require(not any(s.token is token for s in list(self.sessions.values())), C.CKR_SESSION_EXISTS)
        self._check_pin_len(so_pin)
        if token.store is not None:
            token.store.initialize(label, so_pin)
            token.user = None
            token.reload()
            return
        name, store = self.catalog.new()
        store.anchor = self.anchor
        try:
            store.initialize(label, so_pin)
        except BaseException:
            store.close()
            self.catalog.discard(name)
            raise
        token.store = store
        token.refresh()
        with self.lock:
            self.names[name] = slot
            self.free_slot = next(self._slot_ids)
            self.tokens[self.free_slot] = self._new_token(self.free_slot, None)

    # --- sessions -----------------------------------------------------------
    def _session(self, handle: int) -> Session:
        session = self.sessions.get(handle)
        require(session is not None, C.CKR_SESSION_HANDLE_INVALID, f"session {handle}")
        return session

    def open_session(self, slot: int, flags: int) -> int:
        token = self._token(slot)
        require(flags & C.CKF_SERIAL_SESSION, C.CKR_SESSION_PARALLEL_NOT_SUPPORTED)
        require(token.initialized, C.CKR_TOKEN_NOT_RECOGNIZED, "token not initialized")
        self.backends.require_present(token)
        rw = bool(flags & C.CKF_RW_SESSION)
        require(rw or token.user != C.CKU_SO, C.CKR_SESSION_READ_WRITE_SO_EXISTS)
        handle = next(self._session_ids)
        self.sessions[handle] = Session(handle, token, rw)
        return handle

    def close_session(self, handle: int) -> None:
        session = self._session(handle)
        token = session.token
        del self.sessions[handle]
        self.offload.drop_session(handle)
        for obj in token.index.owned(handle):
            token.index.remove(obj)
        # closing the application's last session with the token logs it out
        if token.user is not None and not any(s.token is token for s in list(self.sessions.values())):
            token.logout()
            self.backends.logout(token)

    def close_all_sessions(self, slot: int) -> None:
        token = self._token(slot)
        for handle in [h for h, s in list(self.sessions.items()) if s.token is token]:
            self.close_session(handle)

    def get_session_info(self, handle: int) -> dict:
        session = self._session(handle)
        return dict(slot_id=session.token.slot_id, state=session.state(),
                    flags=session.flags(), device_error=0)

    # --- PINs and login -----------------------------------------------------
    def init_pin(self, handle: int, pin: bytes) -> None:
        session = self._session(handle)
        require(session.state() == C.CKS_RW_SO_FUNCTIONS, C.CKR_USER_NOT_LOGGED_IN, "C_InitPIN needs the SO")
        self._check_pin_len(pin)
        session.token.store.init_pin(pin)

    def set_pin(self, handle: int, old_pin: bytes, new_pin: bytes) -> None:
        session = self._session(handle)
        require(session.rw, C.CKR_SESSION_READ_ONLY)
        self._check_pin_len(new_pin)
        session.token.store.set_pin(PIN_USER_FOR_STATE[session.state()], old_pin, new_pin)

    def login(self, handle: int, user_type: int, pin: bytes) -> None:
        session = self._session(handle)
        token = session.token
        require(user_type in (C.CKU_SO, C.CKU_USER, C.CKU_CONTEXT_SPECIFIC), C.CKR_USER_TYPE_INVALID)
        if user_type == C.CKU_CONTEXT_SPECIFIC:
            waiting = [op for op in session.ops.values() if op.needs_auth]
            require(token.user == C.CKU_USER, C.CKR_USER_NOT_LOGGED_IN)
            require(bool(waiting), C.CKR_OPERATION_NOT_INITIALIZED, "no operation needs a context-specific login")
            self._check_pin(token, C.CKU_USER, pin)
            for op in waiting:
                op.needs_auth = False
            return
        require(token.user != user_type, C.CKR_USER_ALREADY_LOGGED_IN)
        require(token.user is None, C.CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
        if user_type == C.CKU_SO:
            require(all(s.rw for s in list(self.sessions.values()) if s.token is token),
                    C.CKR_SESSION_READ_ONLY_EXISTS)
        self._check_pin(token, user_type, pin, login=True)
        if self.sessions.get(handle) is not session:     # closed while the PIN was checked
            if not any(s.token is token for s in list(self.sessions.values())):
                token.logout()
            raise PKCS11Error(C.CKR_SESSION_HANDLE_INVALID, "session closed during C_Login")
        if user_type == C.CKU_USER:
            try:
                self.backends.login(token, pin)    # a device that refuses the PIN fails C_Login
            except PKCS11Error:
                token.logout()
                raise

    def _check_pin(self, token, user_type: int, pin: bytes, login: bool = False) -> None:
        """A PIN that locks (or is locked) ends the token's cryptographic
        operations, offloaded ones included: a locked PIN must stop key use.
        The PIN's key derivation runs with the token's lock let go."""
        slow = token.let_go
        try:
            token.login(user_type, pin, slow) if login else token.store.login(user_type, pin, slow)
        except PKCS11Error as err:
            if err.rv == C.CKR_PIN_LOCKED or token.store.pin_flags() & (
                    C.CKF_USER_PIN_LOCKED | C.CKF_SO_PIN_LOCKED):
                self._end_token_operations(token)
            raise

    def logout(self, handle: int) -> None:
        session = self._session(handle)
        token = session.token
        require(token.user is not None, C.CKR_USER_NOT_LOGGED_IN)
        self._end_token_operations(token)
        token.logout()
        self.backends.logout(token)

    def _end_token_operations(self, token) -> None:
        for s in list(self.sessions.values()):
            if s.token is token:
                s.end_all()
                self.offload.drop_session(s.handle)

    # --- random numbers -----------------------------------------------------
    def generate_random(self, handle: int, length: int) -> bytes:
        self._session(handle)
        return os.urandom(length)

    def seed_random(self, handle: int, seed: bytes) -> None:
        """Mix the seed into the kernel's pool (the source of os.urandom); it
        adds to, never replaces, the pool's entropy."""
        self._session(handle)
        try:
            with open("/dev/urandom", "wb") as pool:
                pool.write(seed)
        except OSError:
            raise PKCS11Error(C.CKR_RANDOM_SEED_NOT_SUPPORTED, "cannot write /dev/urandom") from None
