"""What the engine asks of a token's persistent store.

One TokenStore per token.  The store owns the token record (label, serial, PIN
verifiers, retry counters), the token master key, and the token objects.

Sealing (sealing.py): attribute values whose types the engine marks sensitive (CKA_VALUE
of a secret or EC private key, the RSA private components, ...) are never written in
clear. They are sealed with AES-256-GCM, the additional data binding each value to its
token, object and attribute type:
  - objects kept under the master key (`under_master`: private objects, and keys that are
    sensitive, never extractable or trusted) use the token master key, a random 256-bit
    key that the SO PIN and the user PIN each unwrap through a slow KDF; their whole
    record is sealed too (an envelope binding token, object and version), so such objects
    can be written, and their keys used, only while someone is logged in. A private
    object's record shows in clear only its index entry (class, key type, CKA_TOKEN,
    CKA_PRIVATE, and its label and ID as keyed hashes: `blind`), and a sealed list of the
    private objects (uid, version) is checked at each login;
  - other public objects use the token's public sealing key, kept in the store itself.
    This binds and integrity-checks the value, but gives no secrecy beyond the file's
    permissions, exactly as such an object promises nobody secrecy (SoftHSM2 keeps
    public objects unencrypted too).
Loaded records carry a `Sealed` placeholder for each sealed value; the engine opens
it with `unseal` when a key is used, and a record that fails its check is refused.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

from .. import constants as C

# What the store's index lists of each object, without reading its record: the
# attributes searches name most (the engine's Index, provider/objects.py), CKA_PRIVATE
# (who may see it) and CKA_TOKEN; CKA_UNIQUE_ID is the uid itself and may be left
# out. Not authenticated: checked against the record when that is read (TokenStore.load).
INDEXED = (C.CKA_CLASS, C.CKA_LABEL, C.CKA_ID, C.CKA_KEY_TYPE, C.CKA_UNIQUE_ID)
STUB = INDEXED + (C.CKA_PRIVATE, C.CKA_TOKEN)


# What the index lists of a private object in clear; its label and ID only as keyed
# hashes (TokenStore.blind), which a search computes from the value it looks for.
BLINDED = (C.CKA_LABEL, C.CKA_ID)


def stub_of(attrs: dict) -> dict:
    return {cka: attrs[cka] for cka in STUB if cka in attrs}


def under_master(attrs: dict) -> bool:
    """Is this object kept sealed under the token master key (which only a PIN unwraps)?
    Private objects (every attribute), and public keys a file reader must not open:
    sensitive, never extractable, or trusted (their key values, and the binding of
    every attribute). Such an object can be written, and its key used, only while
    someone is logged in."""
    return bool(attrs.get(C.CKA_PRIVATE) or attrs.get(C.CKA_SENSITIVE) or attrs.get(C.CKA_TRUSTED)
                or attrs.get(C.CKA_EXTRACTABLE) is False)


class Locked(NamedTuple):
    """What changes() and load() give for a private object while no one is logged in:
    its record is sealed whole, so only its index entry is known."""
    stub: dict


class Entry:
    """One object's index entry as a store lists it: reads like the dict stub_of
    gives (get, [], in) for a token object, in a third of a dict's memory (a token
    of 100,000 objects holds 100,000 of them)."""
    __slots__ = ("cls", "label", "cka_id", "key_type", "private")
    _FIELDS = {C.CKA_CLASS: "cls", C.CKA_LABEL: "label", C.CKA_ID: "cka_id", C.CKA_KEY_TYPE: "key_type"}

    def __init__(self, cls: int, label, cka_id, key_type, private: bool):
        self.cls, self.label, self.cka_id, self.key_type, self.private = cls, label, cka_id, key_type, private

    def get(self, cka: int, default=None):
        if cka == C.CKA_TOKEN:
            return True
        if cka == C.CKA_PRIVATE:
            return self.private
        field = self._FIELDS.get(cka)
        value = None if field is None else getattr(self, field)
        return default if value is None else value

    def buckets(self) -> list:
        """(attribute, value) of each INDEXED attribute but CKA_UNIQUE_ID it has."""
        out = [(C.CKA_CLASS, self.cls)]
        if self.label is not None:
            out.append((C.CKA_LABEL, self.label))
        if self.cka_id is not None:
            out.append((C.CKA_ID, self.cka_id))
        if self.key_type is not None:
            out.append((C.CKA_KEY_TYPE, self.key_type))
        return out

    def __contains__(self, cka: int) -> bool:
        return self.get(cka) is not None

    def __getitem__(self, cka: int):
        value = self.get(cka)
        if value is None:
            raise KeyError(cka)
        return value


@dataclass(frozen=True)
class Sealed:
    """A sealed attribute value as loaded; open it with TokenStore.unseal."""
    blob: bytes


class Conflict(Exception):
    """A compare-and-set write found the object at another version than the writer
    read (changed or destroyed by another process or thread), or a new object's uid
    taken or tombstoned. Nothing was written; the engine refreshes and decides again."""


class Changes(NamedTuple):
    """What changes(cursor) answers. `upserts`: (uid, version, attrs) with Sealed
    placeholders (a Locked entry for a private object while no one is logged in);
    `deleted`: uids. `full`: the answer is the whole token (the cursor
    was None, or older than the pruned tombstones): anything the reader holds that
    is not in `upserts` is gone."""
    cursor: int
    upserts: list
    deleted: list
    full: bool


class TokenStore(ABC):
    """The contract every store keeps (memory, SQLite, filesystem, PostgreSQL); the
    contract tests in tests/unit/test_store.py run over each.

    Versions: every object record has a version, 1 when created, +1 per write.
    Every write names the version the writer read (`expect`; 0 for a new object)
    and raises Conflict if the stored one differs: no silent overwrite, and a
    destroyed object's uid can never be written again (its tombstone, or the
    pruning horizon, says it existed), so no interleaving resurrects it.
    Transactions: writes inside `with store.transaction():` commit together or not
    at all; outside one, each write is its own transaction.
    The change feed: `head()` is (seq, epoch), one cheap read; seq grows by one per
    object write or delete (in any process), epoch per C_InitToken."""

    # --- the token record ---------------------------------------------------
    @abstractmethod
    def initialized(self) -> bool: ...

    @abstractmethod
    def initialize(self, label: bytes, so_pin: bytes) -> None:
        """C_InitToken. A fresh store: create the record, master key, SO PIN.
        An initialized one: check the SO PIN first (counting a failure, raising
        CKR_PIN_INCORRECT / CKR_PIN_LOCKED), then destroy every object, forget the
        user PIN, and start again with a new master key.  `label` is 32 bytes."""

    @property
    @abstractmethod
    def label(self) -> bytes: ...

    @property
    @abstractmethod
    def serial(self) -> str:
        """16 printable characters, unique per token, fixed at initialization."""

    @abstractmethod
    def user_pin_initialized(self) -> bool: ...

    @abstractmethod
    def pin_flags(self) -> int:
        """CKF_USER_PIN_COUNT_LOW / _FINAL_TRY / _LOCKED and the CKF_SO_PIN_* twins,
        from the durable failure counters."""

    # --- PINs -----------------------------------------------------------------
    @abstractmethod
    def login(self, user_type: int, pin: bytes, slow=None) -> None:
        """Check the PIN of CKU_SO or CKU_USER (the slow key derivation inside
        `slow()`, a context the caller gives to let its locks go). Increments the failure counter
        durably *before* the check and resets it after success, so a killed
        process still counts the try. Raises CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
        CKR_USER_PIN_NOT_INITIALIZED. On success the store holds the master key."""

    @abstractmethod
    def logout(self) -> None:
        """Forget the master key."""

    @abstractmethod
    def init_pin(self, pin: bytes) -> None:
        """C_InitPIN (SO logged in): set the user PIN, reset its counter and lock."""

    @abstractmethod
    def set_pin(self, user_type: int, old_pin: bytes, new_pin: bytes) -> None:
        """C_SetPIN: check `old_pin` as `login` does, then re-wrap under `new_pin`."""

    # --- objects --------------------------------------------------------------
    @abstractmethod
    def transaction(self):
        """Context manager: the writes inside commit as one (nested: joins the outer)."""

    @abstractmethod
    def save_object(self, uid: str, attrs: dict, sensitive: frozenset, expect: int = 0,
                    lineage: str | None = None) -> int:
        """Write a token object if its stored version is `expect` (0: it must never
        have existed); returns the new version. Durable when the outermost
        transaction commits. `attrs` maps CKA -> typed value (provider.attrtypes);
        values whose type is in `sensitive` are sealed as described above.
        `lineage` (new objects only): the uid whose IV counter this object's key
        shares (a copy of a key shares its source's); default its own uid."""

    @abstractmethod
    def delete_object(self, uid: str, expect: int) -> None:
        """Delete it if its stored version is `expect`, leaving a tombstone; else Conflict."""

    @abstractmethod
    def check_object(self, uid: str, expect: int) -> str:
        """Conflict unless the object is stored at version `expect`; returns its
        lineage. Inside a transaction it holds until the commit (C_CopyObject
        checks its source this way: a copy of a destroyed key is never made)."""

    @abstractmethod
    def head(self) -> tuple:
        """(seq, epoch), cheaply: if it did not move, nothing changed."""

    @abstractmethod
    def changes(self, cursor) -> Changes:
        """Objects written and uids deleted since `cursor` (None = everything) by
        this or any other process. Cheap when nothing changed."""

    @abstractmethod
    def index(self) -> tuple:
        """(cursor, [(uid, version, stub, attrs or None)]): every object as the index
        lists it (stub: STUB attributes), with its whole attributes where the store
        had to read them anyway. The cursor continues with changes()."""

    @abstractmethod
    def load(self, uid: str) -> tuple | None:
        """(version, attrs) of one object read now, its record tag checked; None if
        it is not there or fails its check (logged)."""

    @abstractmethod
    def reserve_counter(self, uid: str, count: int, legacy: str | None = None,
                        lineage: str | None = None) -> int:
        """Reserve `count` values of the IV counter of `uid`'s lineage; returns the
        first. `lineage` names it for a session object (not in the store); for a
        token object uid must be stored (else Conflict). Durable before it returns; never hands out a value twice, whatever
        happens to any file beside the store. `legacy`: the identifier a release
        before schema 2 kept this key's counter under (imported at the upgrade)."""

    @abstractmethod
    def blind(self, cka: int, value) -> bytes | None:
        """The keyed hash a private object's index entry holds for this label or ID
        (BLINDED); None while no one is logged in."""

    @abstractmethod
    def entry_of(self, attrs: dict) -> dict:
        """The index entry the store lists for an object of these attributes (stub_of,
        with a private object's label and ID blinded)."""

    @abstractmethod
    def unseal(self, uid: str, cka: int, value: Sealed) -> bytes:
        """Open a sealed value; CKR_USER_NOT_LOGGED_IN if its key is not held,
        CKR_DEVICE_ERROR (logged) if its integrity check fails."""

    # --- the audit log (schema 5; the chain itself is provider/audit's) ---------------
    # Two append-only tables of rows (seq, digest, data): `records`, the audit records,
    # and `checkpoints`, the signed checkpoints. The store does not read `data`; it
    # keeps the rows in seq order, refuses a gap or a rewrite, and writes them in the
    # open transaction, so that a change and its record commit together. Audit
    # writes do not move head(): the object change feed is not woken by them.
    @abstractmethod
    def audit_head(self) -> tuple:
        """(seq, digest) of the last record; with none left after a prune, of the
        checkpoint the prune kept (the anchor); (0, b"") for a log never written."""

    @abstractmethod
    def audit_append(self, rows: list) -> None:
        """Append records [(seq, digest, data)], their seqs following audit_head()'s
        one by one, else Conflict (another writer came first). In the open transaction
        (durable when it commits), or one of its own."""

    @abstractmethod
    def audit_read(self, after: int, limit: int) -> list:
        """Up to `limit` records with seq > after, in seq order."""

    @abstractmethod
    def audit_put_checkpoint(self, seq: int, digest: bytes, data: bytes) -> None:
        """Keep a checkpoint made at record `seq` (a record there, or the anchor);
        ValueError if seq is beyond audit_head() or not above the last checkpoint."""

    @abstractmethod
    def audit_checkpoints(self, after: int = -1) -> list:
        """The checkpoints [(seq, digest, data)] with seq > after, in seq order."""

    @abstractmethod
    def audit_prune(self, through: int) -> int:
        """Retention: delete the records with seq <= through and the checkpoints
        before it; the checkpoint at `through` must exist (ValueError) and stays, the
        anchor the remaining chain verifies from. Returns the records deleted."""

    @abstractmethod
    def close(self) -> None: ...


class Catalog(ABC):
    """The tokens one store holds, found in the store itself (a table, a directory
    of token stores), never by the engine guessing names. One per Library; the
    kind is chosen by the configuration's [store] table (provider/store/__init__.py)."""

    @abstractmethod
    def names(self) -> list:
        """The initialized tokens, in the order they were created."""

    @abstractmethod
    def open(self, name: str) -> TokenStore: ...

    @abstractmethod
    def new(self) -> tuple:
        """(name, store) for a token not made yet: it exists once store.initialize() ran."""

    @abstractmethod
    def discard(self, name: str) -> None:
        """Remove what a failed initialize() of a new token left behind."""

    def close(self) -> None:
        """Release what the catalog itself holds (the stores close on their own)."""
