"""Sealing, PIN verification and the TokenStore behaviour built on them.

Keys of one token:
  master key   random 256 bits; wrapped (AES-256-GCM) under a KEK that PBKDF2-HMAC-
               SHA256 derives from each PIN with its own random 16-byte salt.  The wrap
               is also the PIN verifier: a wrong PIN fails the GCM unwrap.
  public key   random 256 bits, kept in clear in the token record; seals the sensitive
               values of public objects, and (through HMAC) keys the record tags.

A sealed value is   key id (1 byte: M master, P public) | nonce (12) | ciphertext+tag,
with AAD = serial | uid | CKA type | key id, so a value moved to another token,
object or attribute does not open.  Every stored object record carries
HMAC-SHA256(tag key, serial | uid | record): a changed byte anywhere in the record
(a flag, a label, a sealed blob, a record swapped with another object's) is caught
when the record is loaded, and the record is not served.  The record tag gives
integrity against accidents and against anyone who cannot read the token file;
whoever can read it has the public key too (see base.py: public objects promise no
more than the file's permissions).

`SealingStore` is the TokenStore contract on top of a few persistence primitives
(read / update the token record, read / put / delete object rows, read changes,
counters) that each store provides; the version checks, tombstone pruning and IV
counter rules are written here once.  PIN failure counters are incremented and
committed before the (slow) PIN check and reset after a success, so a process
killed mid-check still counts the try.  A wrong PIN that reaches the limit answers
CKR_PIN_INCORRECT; every try after that, right PIN or not, CKR_PIN_LOCKED.
"""

import hashlib
import hmac
import os
import struct
import threading
from abc import abstractmethod
from contextlib import nullcontext

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import attrtypes
from .. import constants as C
from ..errors import PKCS11Error
from ..log import LOG
from . import records
from .anchor import NO_ANCHOR, guard
from .base import Changes, Conflict, Sealed, TokenStore, stub_of

KDF_ITERATIONS = 600_000
SCHEMA_VERSION = 3         # 1: the first release (no versions); 2: versions, counters, pruning;
#                            3: the TPM anchor (anchor.py: field `anchor`)
TOMBSTONE_WINDOW = 1000    # tombstones kept for the last this-many changes; older readers resync
IV_PREFIX, LEGACY_PREFIX = "iv:", "legacy:"
KEY_LEN, SALT_LEN, NONCE_LEN = 32, 16, 12
MASTER, PUBLIC = b"M", b"P"
_ULONG = struct.Struct(">Q")


# --- primitives -----------------------------------------------------------------
def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two field lists give the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _gcm_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _gcm_open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag on any mismatch (wrong key, changed byte, wrong AAD)."""
    if len(blob) < NONCE_LEN + 16:
        raise InvalidTag()
    return AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)


def derive_kek(pin: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", pin, salt, iterations, KEY_LEN)


def wrap_master(master: bytes, pin: bytes, serial: str, who: str, iterations: int) -> dict:
    """The token-record fields that let `pin` (of `who`: "so"/"user") unwrap `master`."""
    salt = os.urandom(SALT_LEN)
    wrap = _gcm_seal(derive_kek(pin, salt, iterations), master, _lp(serial.encode(), who.encode()))
    return {f"{who}_salt": salt, f"{who}_iters": iterations, f"{who}_wrap": wrap}


def unwrap_master(tok: dict, pin: bytes, who: str) -> bytes | None:
    """The master key, or None if `pin` is not `who`'s PIN."""
    kek = derive_kek(pin, tok[f"{who}_salt"], tok[f"{who}_iters"])
    try:
        return _gcm_open(kek, tok[f"{who}_wrap"], _lp(tok["serial"].encode(), who.encode()))
    except InvalidTag:
        return None


def _value_aad(serial: str, uid: str, cka: int, key_id: bytes) -> bytes:
    return _lp(b"value", serial.encode(), uid.encode(), _ULONG.pack(cka), key_id)


def seal_value(key_id: bytes, key: bytes, serial: str, uid: str, cka: int, raw: bytes) -> bytes:
    return key_id + _gcm_seal(key, raw, _value_aad(serial, uid, cka, key_id))


def open_value(key: bytes, serial: str, uid: str, cka: int, blob: bytes) -> bytes:
    return _gcm_open(key, blob[1:], _value_aad(serial, uid, cka, blob[:1]))


def tag_key(public_key: bytes) -> bytes:
    """A key for record tags, separate from the value-sealing use of the public key."""
    return hmac.new(public_key, b"ferrohsm record tag v1", hashlib.sha256).digest()


def record_tag(tkey: bytes, serial: str, uid: str, record: bytes) -> bytes:
    return hmac.new(tkey, _lp(serial.encode(), uid.encode(), record), hashlib.sha256).digest()


# --- PIN policy tables ----------------------------------------------------------
WHO = {C.CKU_SO: "so", C.CKU_USER: "user"}
# who -> (COUNT_LOW, FINAL_TRY, LOCKED)
PIN_FLAGS = {
    "so": (C.CKF_SO_PIN_COUNT_LOW, C.CKF_SO_PIN_FINAL_TRY, C.CKF_SO_PIN_LOCKED),
    "user": (C.CKF_USER_PIN_COUNT_LOW, C.CKF_USER_PIN_FINAL_TRY, C.CKF_USER_PIN_LOCKED),
}
TOKEN_FIELDS = ("label", "serial", "epoch", "seq", "pruned", "pub_key",
                "so_salt", "so_iters", "so_wrap", "so_fail",
                "user_salt", "user_iters", "user_wrap", "user_fail",
                "anchor")                                         # (schema 3)
NO_USER_PIN = {"user_salt": None, "user_iters": None, "user_wrap": None, "user_fail": 0}


def pin_flags_of(fails: int, max_failures: int, who: str) -> int:
    low, final, locked = PIN_FLAGS[who]
    if fails >= max_failures:
        return low | locked
    return (low if fails else 0) | (final if fails == max_failures - 1 else 0)


def _who(user_type: int) -> str:
    who = WHO.get(user_type)
    if who is None:
        raise PKCS11Error(C.CKR_USER_TYPE_INVALID, f"user type {user_type}")
    return who


# --- the store behaviour ----------------------------------------------------------
class SealingStore(TokenStore):
    """TokenStore semantics; subclasses provide the persistence primitives below.
    `epoch` counts initializations: a master key held from an older epoch (the token
    was re-initialized, perhaps by another process) is dropped.
    `anchor` (anchor.py; set by the Library from `[store] anchor`) checks and advances
    the token record around every write transaction: `_write` is wrapped here."""
    anchor = NO_ANCHOR

    def __init__(self, max_pin_failures: int = 10, kdf_iterations: int = KDF_ITERATIONS):
        self.max_failures = max_pin_failures
        self.kdf_iterations = kdf_iterations
        self._lock = threading.RLock()
        self._master: bytes | None = None
        self._master_epoch: int | None = None
        self._keys: tuple | None = None     # (epoch, serial, public key, tag key)
        self._anchor_seen = None            # (state digest, MAC) last checked or written
        self._anchor_dirty = False          # this transaction must advance the anchor
        self._iv_high: dict = {}            # counter name -> end of the last block reserved here
        self._iv_head = None                # (serial, (epoch, seq)): the highest head reserved at
        self._iv_rewound = False            # the store went backwards: counter IVs refused
        self._write = guard(self, self._write)

    # persistence primitives -------------------------------------------------------
    @abstractmethod
    def _exists(self) -> bool: ...

    @abstractmethod
    def _create(self, fields: dict) -> None:
        """Create the storage with this token record and no objects, atomically."""

    @abstractmethod
    def _write(self):
        """Context manager: one atomic, durable write transaction that no other
        writer (thread or process) interleaves with; nested, it joins the outer one."""

    @abstractmethod
    def _token(self) -> dict:
        """The token record (TOKEN_FIELDS), read now."""

    @abstractmethod
    def _update(self, fields: dict) -> None: ...

    @abstractmethod
    def _row(self, uid: str) -> tuple | None:
        """(version, lineage) of the stored object, or None."""

    @abstractmethod
    def _tombstoned(self, uid: str) -> bool: ...

    @abstractmethod
    def _put(self, uid: str, version: int, record: bytes, tag: bytes, lineage: str) -> None:
        """Insert or replace the row; gives it the next change number."""

    @abstractmethod
    def _delete(self, uid: str) -> None:
        """Remove the (existing) row, leaving a tombstone with the next change number."""

    @abstractmethod
    def _uids(self) -> list:
        """Every stored object's uid."""

    @abstractmethod
    def _prune(self, upto: int) -> None:
        """Forget tombstones with change number <= upto (token field `pruned` is set by the caller)."""

    @abstractmethod
    def _head(self) -> tuple:
        """(seq, epoch), cheaply."""

    @abstractmethod
    def _since(self, cursor) -> tuple:
        """One consistent snapshot: (token record, [(uid, version, record, tag)], [deleted uid])
        with change number > cursor (None: every object, no tombstones)."""

    def _get(self, uid: str) -> tuple | None:
        """(version, record, tag) of one object; a store with a faster way overrides this."""
        return next(((v, rec, tag) for u, v, rec, tag in self._since(None)[1] if u == uid), None)

    def _put_index(self, uid: str, stub: dict) -> None:
        """Record the object's index entry (STUB attributes) in the write transaction
        _put just wrote in; a store without an index of its own ignores it (its
        index() then reads every record)."""

    def _index_rows(self) -> tuple | None:
        """(token record, [(uid, version, stub or None, None)]) from the store's own index in
        one snapshot (stub None: this row has no index entry), or None: no index kept."""
        return None

    @abstractmethod
    def _counter(self, name: str) -> int | None: ...

    @abstractmethod
    def _set_counter(self, name: str, value: int) -> None: ...

    # token record --------------------------------------------------------------------
    def initialized(self) -> bool:
        return self._exists()

    @property
    def label(self) -> bytes:
        return self._token()["label"]

    @property
    def serial(self) -> str:
        return self._token()["serial"]

    def user_pin_initialized(self) -> bool:
        return self._token()["user_wrap"] is not None

    def pin_flags(self) -> int:
        tok = self._token()
        return sum(pin_flags_of(tok[f"{who}_fail"], self.max_failures, who) for who in PIN_FLAGS)

    def initialize(self, label: bytes, so_pin: bytes) -> None:
        with self._lock:
            fresh = not self._exists()
            serial = self.anchor.fresh_serial() if fresh else self._check_pin("so", so_pin)[1]["serial"]
            master = os.urandom(KEY_LEN)
            fields = {"label": bytes(label), "serial": serial, "pub_key": os.urandom(KEY_LEN),
                      "so_fail": 0, **NO_USER_PIN,
                      **wrap_master(master, so_pin, serial, "so", self.kdf_iterations)}
            if fresh:
                self._create({**fields, "epoch": 1, "seq": 0, "pruned": 0, "anchor": None})
                self.verify_anchor()            # anchors the new record
            else:
                with self._write():
                    epoch = self._token()["epoch"]
                    for uid in self._uids():
                        self._delete(uid)
                    self._update({**fields, "epoch": epoch + 1})
            self.logout()
            self._keys = None

    def verify_anchor(self) -> None:
        """Refuse a token record its TPM anchor does not vouch for (CKR_DEVICE_ERROR);
        adopt a record made without one.  In a write transaction: writers take turns."""
        if self.anchor.on:
            with self._write():
                pass

    # PINs -----------------------------------------------------------------------------
    def _check_pin(self, who: str, pin: bytes, slow=nullcontext) -> tuple:
        """(master key, token record) if `pin` is `who`'s PIN; counts the try first.
        The key derivation runs in `slow()` and outside the store's lock."""
        with self._write():
            tok = self._token()
            if tok[f"{who}_wrap"] is None:
                raise PKCS11Error(C.CKR_USER_PIN_NOT_INITIALIZED)
            fails = tok[f"{who}_fail"]
            if fails >= self.max_failures:
                raise PKCS11Error(C.CKR_PIN_LOCKED, f"{who} PIN locked")
            self._update({f"{who}_fail": fails + 1})
        with slow():
            master = unwrap_master(tok, pin, who)
        if master is None:
            raise PKCS11Error(C.CKR_PIN_INCORRECT)
        with self._write():
            self._update({f"{who}_fail": 0})
        return master, tok

    def login(self, user_type: int, pin: bytes, slow=nullcontext) -> None:
        master, tok = self._check_pin(_who(user_type), pin, slow)
        with self._lock:
            self._master, self._master_epoch = master, tok["epoch"]

    def logout(self) -> None:
        with self._lock:
            self._master = self._master_epoch = None

    def backend_secret(self, name: str) -> bytes:
        """A secret for device backend `name` (e.g. TPM object auth) that only a logged-in
        user can compute and that a PIN change keeps: HMAC-SHA256 of the master key."""
        with self._lock:
            if self._master is None:
                raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "backend secret needs a login")
            return hmac.new(self._master, b"ferrohsm backend secret\0" + name.encode(),
                            hashlib.sha256).digest()

    def _held(self, epoch: int) -> bytes:
        if self._master is None or self._master_epoch != epoch:
            self.logout()
            raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "the token master key is not held")
        return self._master

    def init_pin(self, pin: bytes) -> None:
        with self._lock:
            tok = self._token()
            fields = wrap_master(self._held(tok["epoch"]), pin, tok["serial"], "user", self.kdf_iterations)
            with self._write():
                self._held(self._token()["epoch"])
                self._update({**fields, "user_fail": 0})

    def set_pin(self, user_type: int, old_pin: bytes, new_pin: bytes) -> None:
        with self._lock:
            who = _who(user_type)
            master, tok = self._check_pin(who, old_pin)
            fields = wrap_master(master, new_pin, tok["serial"], who, self.kdf_iterations)
            with self._write():
                if self._token()["epoch"] != tok["epoch"]:
                    raise PKCS11Error(C.CKR_DEVICE_ERROR, "token re-initialized meanwhile")
                self._update(fields)

    # objects ----------------------------------------------------------------------------
    def _public(self, tok: dict) -> tuple:
        """(serial, public key, tag key) of the record's epoch, cached."""
        if self._keys is None or self._keys[0] != tok["epoch"]:
            self._keys = (tok["epoch"], tok["serial"], tok["pub_key"], tag_key(tok["pub_key"]))
        return self._keys[1:]

    def transaction(self):
        return self._write()

    def _at(self, uid: str, expect: int) -> tuple:
        """The stored (version, lineage) of uid, which must be `expect`; else Conflict."""
        row = self._row(uid)
        if (row[0] if row else 0) != expect or (expect == 0 and self._tombstoned(uid)):
            raise Conflict(uid)
        return row

    def save_object(self, uid: str, attrs: dict, sensitive: frozenset, expect: int = 0,
                    lineage: str | None = None) -> int:
        with self._lock, self._write():
            row = self._at(uid, expect)
            tok = self._token()
            serial, pub, tkey = self._public(tok)
            key_id = MASTER if attrs.get(C.CKA_PRIVATE) else PUBLIC
            key = None

            def seal(cka: int, raw: bytes) -> bytes:
                nonlocal key
                if key is None:
                    key = self._held(tok["epoch"]) if key_id == MASTER else pub
                return seal_value(key_id, key, serial, uid, cka, raw)

            plain = {cka: attrtypes.decode(cka, self.unseal(uid, cka, v)) if isinstance(v, Sealed) else v
                     for cka, v in attrs.items()}
            record = records.pack(plain, sensitive, seal)
            self._put(uid, expect + 1, record, record_tag(tkey, serial, uid, record),
                      row[1] if row else (lineage or uid))
            self._put_index(uid, stub_of(plain))
            return expect + 1

    def delete_object(self, uid: str, expect: int) -> None:
        with self._lock, self._write():
            if expect == 0:
                raise Conflict(uid)
            self._at(uid, expect)
            self._delete(uid)
            tok = self._token()
            if tok["seq"] - tok["pruned"] > 2 * TOMBSTONE_WINDOW:
                self._prune(tok["seq"] - TOMBSTONE_WINDOW)
                self._update({"pruned": tok["seq"] - TOMBSTONE_WINDOW})

    def check_object(self, uid: str, expect: int) -> str:
        with self._lock, self._write():
            if expect == 0:
                raise Conflict(uid)
            return self._at(uid, expect)[1]

    def head(self) -> tuple:
        with self._lock:
            return self._head()

    def changes(self, cursor) -> Changes:
        with self._lock:
            seq, epoch = self._head()
            if self._master is not None and self._master_epoch != epoch:
                self.logout()
            if cursor is not None and seq == cursor:
                return Changes(cursor, [], [], False)
            self.verify_anchor()
            tok, rows, deleted = self._since(cursor)
            full = cursor is None or cursor < tok["pruned"]
            if full and cursor is not None:
                tok, rows, deleted = self._since(None)
            serial, _, tkey = self._public(tok)
            upserts = []
            for uid, version, record, tag in rows:
                attrs = self._verified(tkey, serial, uid, record, tag)
                if attrs is None:
                    deleted.append(uid)   # drop any older copy the caller holds too
                else:
                    upserts.append((uid, version, attrs))
            return Changes(tok["seq"], upserts, deleted, full)

    def index(self) -> tuple:
        with self._lock:
            self.verify_anchor()
            listed = self._index_rows()
            if listed is None:                       # no index of its own: every record
                got = self.changes(None)
                return got.cursor, [(uid, v, stub_of(a), a) for uid, v, a in got.upserts]
            tok, entries = listed
            if self._master is not None and self._master_epoch != tok["epoch"]:
                self.logout()
            for i, (uid, _, stub, _) in enumerate(entries):
                if stub is None:                     # e.g. a row from before the index columns
                    got = self.load(uid)
                    entries[i] = None if got is None else (uid, got[0], stub_of(got[1]), got[1])
            return tok["seq"], [e for e in entries if e is not None] if None in entries else entries

    def load(self, uid: str) -> tuple | None:
        with self._lock:
            row = self._get(uid)
            if row is None:
                return None
            serial, _, tkey = self._public(self._token())
            attrs = self._verified(tkey, serial, uid, row[1], row[2])
            return None if attrs is None else (row[0], attrs)

    @staticmethod
    def _verified(tkey: bytes, serial: str, uid: str, record: bytes, tag: bytes) -> dict | None:
        if hmac.compare_digest(record_tag(tkey, serial, uid, record), tag):
            try:
                return records.unpack(record)
            except (ValueError, PKCS11Error):
                pass
        LOG.warning("token %s: object %s fails its integrity check; not served", serial, uid)
        return None

    def reserve_counter(self, uid: str, count: int, legacy: str | None = None,
                        lineage: str | None = None) -> int:
        with self._lock, self._write():
            row = self._row(uid)
            if row is None and lineage is None:
                raise Conflict(uid)          # a token object destroyed meanwhile
            name = IV_PREFIX + (row[1] if row else lineage)
            if legacy is not None and self._counter(LEGACY_PREFIX + legacy) is not None:
                name = LEGACY_PREFIX + legacy     # the key's counter from before schema 2
            start = self._counter(name) or 0
            self._forward(name, start, self._token())
            self._set_counter(name, start + count)
            self._anchor_dirty = True        # with the anchor on: a restored copy is refused
            self._iv_high[name] = start + count
            return start

    def _forward(self, name: str, start: int, tok: dict) -> None:
        """Refuse counter IVs (CKR_DEVICE_ERROR, for good in this process) once it saw the
        store go backwards - a counter below what it reserved before, or the head (epoch,
        seq) below one it saw: the token files were put back from an older copy, whose
        counters hand out values again."""
        head, seen = (tok["epoch"], tok["seq"]), self._iv_head
        if seen is not None and seen[0] != tok["serial"]:
            self._iv_high, seen = {}, None          # another token in this file now
        back = start < self._iv_high.get(name, 0) or (seen is not None and head < seen[1])
        if back and not self._iv_rewound:
            LOG.error("token %s: the store went backwards (restored from an older copy?); "
                      "counter IVs refused in this process", tok["serial"])
        self._iv_rewound |= back
        if self._iv_rewound:
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "the token store went backwards: no counter IVs")
        self._iv_head = (tok["serial"], max(head, seen[1]) if seen else head)

    def unseal(self, uid: str, cka: int, value: Sealed) -> bytes:
        with self._lock:
            if self._keys is None:
                self._public(self._token())
            epoch, serial, pub, _ = self._keys
            blob = value.blob
            key = self._held(epoch) if blob[:1] == MASTER else pub
            try:
                if blob[:1] not in (MASTER, PUBLIC):
                    raise InvalidTag()
                return open_value(key, serial, uid, cka, blob)
            except InvalidTag:
                LOG.error("token %s: sealed %s of object %s fails its integrity check",
                          serial, C.name_of("CKA_", cka), uid)
                raise PKCS11Error(C.CKR_DEVICE_ERROR, "sealed value fails its integrity check") from None

    def close(self) -> None:
        self.logout()
