"""One slot and its token: the store, who is logged in, and the loaded objects.

Token objects are loaded from the store and kept fresh with `refresh()`, the
head check: one cheap read of the store's (seq, epoch), and only when it moved,
the changes any process made since the last look. The engine refreshes before
every key use and every object function, so a key destroyed or restricted
elsewhere fails there. Writes are compare-and-set against the version this
process holds (store.base.Conflict when another process got there first: the
Library refreshes and runs the function again, see library.retry).
Session objects live only in the index. Handles are per process, as the spec says;
private token objects get new handles after a logout, and private session
objects are destroyed by it (PKCS#11 3.0, C_Logout).
"""

import gc
import threading
from contextlib import contextmanager, nullcontext

from . import constants as C
from .errors import PKCS11Error
from .log import LOG
from .objects import BUCKETED, Index, Obj
from .store.base import Locked, Sealed, under_master

TOKEN_FLAGS = C.CKF_RNG | C.CKF_LOGIN_REQUIRED | C.CKF_RESTORE_KEY_NOT_NEEDED
OPENED = "opened"        # obj.cache key: no Sealed value left in obj.attrs


class WatchedIndex(Index):
    """An Index that knows each session's objects, and reports every object leaving it,
    or changing, to `on_change(obj)`
    - however it happens (destroy, session close, logout, another process's
    write seen by refresh). A replace that changes no attribute apart from the
    key material's sealed/unsealed form (refresh replays our own writes) is no change."""

    def __init__(self, on_change):
        super().__init__()
        self._on_change = on_change
        self._replacing = False
        self._owned: dict[int, dict[int, Obj]] = {}     # session -> its session objects

    def owned(self, session: int) -> list[Obj]:
        return list(self._owned.get(session, {}).values())

    def add(self, obj: Obj) -> None:
        super().add(obj)
        if obj.owner is not None:
            self._owned.setdefault(obj.owner, {})[obj.handle] = obj

    def remove(self, obj: Obj) -> None:
        super().remove(obj)
        mine = self._owned.get(obj.owner)
        if mine is not None:
            mine.pop(obj.handle, None)
            if not mine:
                del self._owned[obj.owner]
        if not self._replacing:
            self._on_change(obj)

    def replace(self, obj: Obj, attrs: dict) -> None:
        # An object known by its index entry only has no old attributes to compare (reading
        # its record here would run its loader, which may be what called us): a change.
        changed = True
        if obj.loaded:
            secret = obj.secret_types()
            old = obj.attrs
            changed = any(old.get(k) != attrs.get(k) for k in old.keys() | attrs.keys() if k not in secret)
        self._replacing = True
        try:
            super().replace(obj, attrs)
        finally:
            self._replacing = False
        if changed:
            self._on_change(obj)

    def forget(self, obj: Obj, stub: dict) -> None:
        """Know `obj` by its index entry only again (its record is read when used)."""
        self.remove(obj)
        obj.forget(stub)
        self.add(obj)

    def changed(self, obj: Obj) -> None:
        self._on_change(obj)


class Token:
    def __init__(self, slot_id: int, store, handles, on_change=lambda obj: None):
        self.slot_id = slot_id
        self.store = store                 # a TokenStore; None for the free slot
        self.user: int | None = None       # CKU_SO or CKU_USER while logged in
        self.index = WatchedIndex(on_change)
        self.index.blind = self.blind
        self.by_uid: dict[str, Obj] = {}
        self.governed_ids: dict[bytes, str] = {}   # governed key id -> its record's uid (provider/gate.py)
        self.open_audit = None              # () -> the token's audit log (provider/audit), set by the Library
        self._audit = None
        self._handles = handles
        self._cursor = None
        self._pending: list | None = None   # index changes waiting for the transaction's commit
        self.lock = threading.RLock()       # this token's calls (provider/library.py, "Locks")
        self._loader = self._load           # one bound method for every object's Obj.loader
        if self.initialized:
            try:
                self.refresh()
            except PKCS11Error as e:     # e.g. refused by its TPM anchor: each use says so again
                LOG.warning("token in slot %d not loaded: %s", slot_id, e.reason)

    @property
    def initialized(self) -> bool:
        return self.store is not None and self.store.initialized()

    def flags(self) -> int:
        if not self.initialized:
            return TOKEN_FLAGS
        flags = TOKEN_FLAGS | C.CKF_TOKEN_INITIALIZED | self.store.pin_flags()
        if self.store.user_pin_initialized():
            flags |= C.CKF_USER_PIN_INITIALIZED
        return flags

    # --- objects ------------------------------------------------------------
    def new_handle(self) -> int:
        return next(self._handles)

    def refresh(self) -> None:
        """Take in what any process wrote to the store since we last looked."""
        if self._cursor is None:
            self._read_index()
            return
        changes = self.store.changes(self._cursor)
        if changes.full and self._cursor is not None:    # our cursor fell behind the pruned tombstones
            kept = {uid for uid, _, _ in changes.upserts}
            changes.deleted.extend(uid for uid in self.by_uid if uid not in kept)
        self._cursor = changes.cursor
        for uid in changes.deleted:
            obj = self.by_uid.pop(uid, None)
            if obj is not None:
                self.index.remove(obj)
        for uid, version, attrs in changes.upserts:
            obj = self.by_uid.get(uid)
            if obj is None:
                obj = self._known(uid, version, attrs)
                self.by_uid[uid] = obj
                self.index.add(obj)
            elif obj.version != version:        # (the same version: our own write, applied already)
                self._take(obj, version, attrs)

    def _known(self, uid: str, version: int, attrs) -> Obj:
        """A new Obj for a record as the store gave it: its attributes, or (Locked: a
        private object while no one is logged in) its index entry, read when used."""
        if isinstance(attrs, Locked):
            return Obj(self.new_handle(), uid, None, version=version, stub=attrs.stub, loader=self._loader)
        return Obj(self.new_handle(), uid, attrs, version=version)

    def _take(self, obj: Obj, version: int, attrs) -> None:
        if isinstance(attrs, Locked):
            self.index.forget(obj, attrs.stub)
        else:
            self.index.replace(obj, attrs)
        obj.version = version

    def _read_index(self) -> None:
        """Know every object from the store's index; records are read when first used.
        (No garbage collection meanwhile: 100,000 new objects would start it ~100 times
        for nothing, as none of them is garbage.)"""
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._take_index()
        finally:
            if collecting:
                gc.enable()

    def _take_index(self) -> None:
        self._cursor, entries = self.store.index()
        if not self.by_uid:                    # the first read: every entry is new
            handles, loader = self._handles, self._loader
            objs = [Obj(next(handles), uid, attrs, None, version, None, stub, loader)
                    for uid, version, stub, attrs in entries]
            self.by_uid.update((obj.uid, obj) for obj in objs)
            self.index.add_many(objs)
            return
        listed = set()
        for uid, version, stub, attrs in entries:
            listed.add(uid)
            obj = self.by_uid.get(uid)
            if obj is None:
                obj = Obj(self.new_handle(), uid, attrs, version=version, stub=stub, loader=self._loader)
                self.by_uid[uid] = obj
                self.index.add(obj)
            elif obj.version != version:          # changed since we knew it (reload after logout)
                if attrs is None:
                    got = self.store.load(uid)
                    version, attrs = got if got is not None else (None, None)
                if attrs is None:
                    self._drop(obj)
                else:
                    self._take(obj, version, attrs)
        for uid in [uid for uid in self.by_uid if uid not in listed]:
            self._drop(self.by_uid[uid])

    def _drop(self, obj: Obj) -> None:
        self.by_uid.pop(obj.uid, None)
        self.index.remove(obj)

    def _load(self, obj: Obj) -> dict:
        """Obj.loader: read the record of an object known by its index entry. Gone, or
        not what the index says at the same version (someone edited the index), it
        leaves the index: CKR_OBJECT_HANDLE_INVALID."""
        got = self.store.load(obj.uid)
        if got is not None and isinstance(got[1], Locked) and obj.private:
            raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "a private object needs a login")
        if got is not None and got[0] == obj.version and not same_entry(
                obj.stub, got[1].stub if isinstance(got[1], Locked) else self.store.entry_of(got[1])):
            LOG.warning("token %s: object %s is not what the store's index says; not served",
                        self.slot_id, obj.uid)
            got = None
        if got is None:
            self._drop(obj)
            raise PKCS11Error(C.CKR_OBJECT_HANDLE_INVALID, "the object is gone")
        version, attrs = got
        if version != obj.version:        # newer than our index entry: take it as refresh would
            self.index.replace(obj, attrs)
            obj.version = version
        return attrs

    def blind(self, cka: int, value) -> bytes | None:
        """How a private object's index entry holds this label or ID (None: no login)."""
        return None if self.store is None else self.store.blind(cka, value)

    def matches(self, obj: Obj, template: dict) -> bool:
        """Obj.matches, False for an object whose record turns out gone or lying."""
        try:
            return obj.matches(template, self.blind)
        except PKCS11Error:
            return False

    def loaded(self, obj: Obj) -> bool:
        """Read the object's record if it was not yet; False if it is gone."""
        if obj.loaded:
            return True
        try:
            obj.attrs
        except PKCS11Error:
            return False
        return True

    def reload(self, private_only: bool = False) -> None:
        """Load every token object again, dropping opened secrets and parsed keys.
        With `private_only`, only private objects are forgotten (and get new
        handles, as the spec wants after C_Logout); public objects keep theirs."""
        for obj in list(self.by_uid.values()):
            if obj.private or not private_only:
                self.index.remove(obj)
                del self.by_uid[obj.uid]
        self._cursor = None
        self.refresh()

    def visible(self, obj: Obj) -> bool:
        return not obj.private or self.user == C.CKU_USER

    @property
    def in_transaction(self) -> bool:
        return self._pending is not None

    @contextmanager
    def let_go(self):
        """Slow work (a PIN's key derivation, key generation, a device call) runs with this
        token's lock let go, if this thread holds it - but not inside a store transaction
        (Library.retry's last try): a call let in then would wait for the transaction's
        store, which waits for the lock it holds."""
        if self.in_transaction or not self.lock._is_owned():
            yield
            return
        state = self.lock._release_save()
        try:
            yield
        finally:
            self.lock._acquire_restore(state)

    @contextmanager
    def transaction(self):
        """The object writes inside commit together; the index follows only on commit."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            with self.store.transaction():
                yield
            pending = self._pending
        finally:
            self._pending = None
        for apply in pending:
            apply()

    def _then(self, apply) -> None:
        if self._pending is None:
            apply()
        else:
            self._pending.append(apply)

    def add_object(self, obj: Obj) -> None:
        if obj.token:
            obj.version = self.store.save_object(obj.uid, obj.attrs, obj.secret_types(), 0, obj.lineage)

        def apply():
            if obj.token:
                self.by_uid[obj.uid] = obj
            self.index.add(obj)
        self._then(apply)

    def update_object(self, obj: Obj, attrs: dict) -> None:
        version = obj.version
        if obj.token:
            version = self.store.save_object(obj.uid, attrs, obj.secret_types(), obj.version)

        def apply():
            self.index.replace(obj, attrs)
            obj.version = version
        self._then(apply)

    def remove_object(self, obj: Obj) -> None:
        if obj.token:
            self.store.delete_object(obj.uid, obj.version)

        def apply():
            if obj.token:
                self.by_uid.pop(obj.uid, None)
            self.index.remove(obj)
        self._then(apply)

    def open(self, obj: Obj) -> Obj:
        """Unseal the object's sealed values in place; refuses a tampered record.
        Remembered in obj.cache, which the index empties when the values change."""
        if obj.cache.get(OPENED):
            return obj
        for cka, value in list(obj.attrs.items()):
            if isinstance(value, Sealed):
                obj.attrs[cka] = self.store.unseal(obj.uid, cka, value)
        obj.cache[OPENED] = True
        return obj

    # --- login --------------------------------------------------------------
    def login(self, user_type: int, pin: bytes, slow=nullcontext) -> None:
        """`slow()`: a context the PIN's key derivation runs in (the caller lets its
        lock go there); another thread may have logged in meanwhile."""
        self.store.login(user_type, pin, slow)
        if self.user is not None:
            raise PKCS11Error(C.CKR_USER_ALREADY_LOGGED_IN if self.user == user_type
                              else C.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "logged in meanwhile")
        self.user = user_type
        self.refresh()
        self._reread_guarded()

    def logout(self) -> None:
        self.store.logout()
        self.user = None
        for obj in list(self.index.objects.values()):
            if obj.owner is not None and obj.private:
                self.index.remove(obj)
        self.reload(private_only=True)
        self._reread_guarded()

    def _reread_guarded(self) -> None:
        """Public token objects kept under the master key (base.under_master: sensitive,
        never extractable or trusted keys) are read again at login and logout: after
        a login their whole record is checked under the master key; after a logout
        their opened key values are forgotten (they need a login again)."""
        for obj in [o for o in self.by_uid.values() if o.loaded and not o.private and under_master(o.attrs)]:
            got = self.store.load(obj.uid)
            if got is None:
                self._drop(obj)
            else:
                self.index.replace(obj, got[1])
                obj.version = got[0]
                self.index.changed(obj)

    @property
    def audit(self):
        """This token's audit log, opened at first need (the first use of a governed key);
        None if the token has none."""
        if self._audit is None and self.open_audit is not None and self.store is not None:
            self._audit = self.open_audit()
        return self._audit

    @audit.setter
    def audit(self, audit) -> None:
        self._audit = audit

    def close(self) -> None:
        if self.store is None:
            return
        writer = getattr(self._audit, "writer", self.store)
        if writer is not self.store:
            try:
                writer.close()
            except Exception:  # closing must not fail C_Finalize
                LOG.exception("closing the audit writer of slot %d", self.slot_id)
        try:
            self.store.close()
        except Exception:  # closing must not fail C_Finalize
            LOG.exception("closing token store of slot %d", self.slot_id)


def same_entry(stub: dict, attrs: dict) -> bool:
    """Does the index entry say what the record says?"""
    return all(stub.get(cka) == attrs.get(cka) for cka in BUCKETED) and \
        bool(stub.get(C.CKA_PRIVATE)) == bool(attrs.get(C.CKA_PRIVATE))


def require(cond: bool, rv: int, reason: str = "") -> None:
    if not cond:
        raise PKCS11Error(rv, reason)
