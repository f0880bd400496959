"""Sealing, PIN verification and the TokenStore behaviour built on them.

Keys of one token:
  master key   random 256 bits; wrapped (AES-256-GCM) under a KEK that Argon2id derives
               from each PIN with its own random 16-byte salt and the cost parameters
               stored beside it (`{who}_kdf`, e.g. "argon2id$v=19$m=65536,t=3,p=4"; a
               wrap without them is PBKDF2-HMAC-SHA256 of `{who}_iters` iterations, from
               an older release, and is wrapped again with Argon2id at that PIN's next
               successful login, as is one whose stored cost is below the configured).
               The wrap is also the PIN verifier: a wrong PIN fails the GCM unwrap.
  master keys  derived from the master key (master_keys): the record key seals whole
               records, the index key blinds private labels and IDs, the list key keeps
               the sealed list of private objects (the token field `manifest`).
  public key   random 256 bits, kept in clear in the token record; seals the sensitive
               values of the public objects not kept under the master key, and
               (through HMAC) keys the record tags.

A sealed value is   key id (1 byte: M master, P public) | nonce (12) | ciphertext+tag,
with AAD = serial | uid | CKA type | key id, so a value moved to another token,
object or attribute does not open.  Every stored object record carries
HMAC-SHA256(tag key, serial | uid | record): a changed byte anywhere in the record
(a flag, a label, a sealed blob, a record swapped with another object's) is caught
when the record is loaded, and the record is not served.  The record tag gives
integrity against accidents and against anyone who cannot read the token file;
whoever can read it has the public key too (see base.py: public objects promise no
more than the file's permissions).

A record kept under the master key (base.under_master) is an envelope: ENVELOPE |
header length | header | AES-GCM(record key, the record as above, AAD = serial | uid |
version | header). The header is the index entry of a private object (its label and ID
blinded), or every attribute but the sealed values of a public one. A record in clear
where an envelope belongs is not served (once the token is of schema 3). The list of
private objects is the XOR of BLAKE2b(list key, version | uid) over them, sealed under
the list key with AAD serial | epoch; every write of a private object updates it in the
same transaction, and every login checks it against the stored rows (_check_listing).

`SealingStore` is the TokenStore contract on top of a few persistence primitives
(read / update the token record, read / put / delete object rows, read changes,
counters) that each store provides; the version checks, tombstone pruning and IV
counter rules are written here once.  PIN tries: see SealingStore._check_pin.
"""

import hashlib
import hmac
import os
import re
import struct
import threading
import time
from abc import abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

from argon2.low_level import Type, hash_secret_raw

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import attrtypes
from .. import constants as C
from ..errors import PKCS11Error
from ..log import LOG
from . import records
from .anchor import NO_ANCHOR, guard
from .base import BLINDED, Changes, Conflict, Locked, Sealed, TokenStore, stub_of, under_master

SCHEMA_VERSION = 5         # 1: the first release (no versions); 2: versions, counters, pruning;
#                            3: per-PIN KDF parameters and recorded tries ({who}_kdf, {who}_tries),
#                            records sealed whole under the master key, the object list (manifest);
#                            4: the TPM anchor (anchor.py: token field `anchor`);
#                            5: the audit log (base.TokenStore.audit_*: records, checkpoints)
AUDIT_TABLES = ("records", "checkpoints")
TOMBSTONE_WINDOW = 1000    # tombstones kept for the last this-many changes; older readers resync
IV_PREFIX, LEGACY_PREFIX = "iv:", "legacy:"
KEY_LEN, SALT_LEN, NONCE_LEN = 32, 16, 12
MASTER, PUBLIC = b"M", b"P"
ENVELOPE = 2               # first byte of a record sealed whole (records.FORMAT is 1)
ENVELOPED = b"E"           # in an envelope's clear header: this value is in the sealed body
BLIND_MARK = b"\x00ferrohsm-blind\x00"   # prefixes a keyed hash standing for a label or ID
BLIND_MEMO = 4096          # keyed hashes of labels and IDs searched for, remembered per login
_ULONG = struct.Struct(">Q")
_LEN = struct.Struct(">I")


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


@dataclass(frozen=True)
class Argon2id:
    """Argon2id cost (RFC 9106).  The default is RFC 9106's second recommended option
    (64 MiB, 3 passes, 4 lanes): about 0.12 s a derivation on one 2-core machine."""
    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 4

    def text(self) -> str:
        """The stored form (PHC string syntax without salt and hash)."""
        return f"argon2id$v=19$m={self.memory_kib},t={self.time_cost},p={self.parallelism}"

    @classmethod
    def parse(cls, text: str) -> "Argon2id":
        m = _ARGON2_TEXT.fullmatch(text or "")
        params = cls(*map(int, m.groups())) if m else None
        if params is None or not params.sane():
            raise PKCS11Error(C.CKR_DEVICE_ERROR, f"PIN KDF {text!r} is not one this release runs")
        return params

    def sane(self) -> bool:
        """Within what a derivation may cost here (a written file could ask for terabytes)."""
        return 1 <= self.parallelism <= 64 and 8 * self.parallelism <= self.memory_kib <= ARGON2_MAX_KIB \
            and 1 <= self.time_cost <= 64

    def below(self, other: "Argon2id") -> bool:
        return self.memory_kib < other.memory_kib or self.time_cost < other.time_cost


_ARGON2_TEXT = re.compile(r"argon2id\$v=19\$m=(\d{1,8}),t=(\d{1,3}),p=(\d{1,3})")
ARGON2_MIN_KIB = 65536          # the least a configuration may set: 64 MiB
ARGON2_MAX_KIB = 4 << 20        # 4 GiB
TAG_LEN = 16                    # bytes of one recorded try (`{who}_tries`)


@dataclass(frozen=True)
class PinPolicy:
    """What a store applies to PIN checks besides the failure limit: the KDF new wraps
    get, and the delay before a check that follows failures: `failure_delay` seconds
    after the first failure, doubling with each further one, at most 16 times that."""
    kdf: Argon2id = Argon2id()
    failure_delay: float = 0.5

    def delay(self, fails: int) -> float:
        return 0.0 if fails <= 0 else self.failure_delay * 2 ** min(fails - 1, 4)


def derive_kek(pin: bytes, salt: bytes, kdf: str | None, iterations: int | None) -> bytes:
    """The KEK of a PIN wrap from its stored fields: `kdf` the Argon2id text, or None
    for a PBKDF2-HMAC-SHA256 wrap of `iterations` (an older release's)."""
    if kdf is None:
        if not isinstance(iterations, int) or not 1 <= iterations <= 10_000_000:
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "PIN KDF iterations out of range")
        return hashlib.pbkdf2_hmac("sha256", pin, salt, iterations, KEY_LEN)
    a = Argon2id.parse(kdf)
    return hash_secret_raw(pin, salt, a.time_cost, a.memory_kib, a.parallelism, KEY_LEN, Type.ID)


def pin_kek(tok: dict, who: str, pin: bytes) -> bytes:
    """The slow step of a PIN check: `who`'s KEK for `pin`, by the record's KDF."""
    return derive_kek(pin, tok[f"{who}_salt"], tok[f"{who}_kdf"], tok[f"{who}_iters"])


def wrap_master(master: bytes, pin: bytes, serial: str, who: str, kdf: Argon2id) -> dict:
    """The token-record fields that let `pin` (of `who`: "so"/"user") unwrap `master`,
    with no tries recorded (they were tries of the previous wrap)."""
    salt = os.urandom(SALT_LEN)
    kek = derive_kek(pin, salt, kdf.text(), None)
    wrap = _gcm_seal(kek, master, _lp(serial.encode(), who.encode()))
    return {f"{who}_salt": salt, f"{who}_kdf": kdf.text(), f"{who}_iters": None, f"{who}_wrap": wrap,
            f"{who}_tries": None}


def unwrap_master(tok: dict, kek: bytes, who: str) -> bytes | None:
    """The master key, or None if `kek` is not the KEK of `who`'s PIN."""
    try:
        return _gcm_open(kek, tok[f"{who}_wrap"], _lp(tok["serial"].encode(), who.encode()))
    except InvalidTag:
        return None


def try_tag(kek: bytes) -> bytes:
    """What the token record keeps of a try whose answer is not known yet: testing a
    PIN against it costs the same KDF as testing it against the wrap."""
    return hmac.new(kek, b"ferrohsm PIN try v1", hashlib.sha256).digest()[:TAG_LEN]


def _tags(blob: bytes | None) -> list:
    blob = blob or b""
    return [blob[i:i + TAG_LEN] for i in range(0, len(blob) - TAG_LEN + 1, TAG_LEN)]


PIN_RECORD = ("salt", "kdf", "iters", "wrap")     # a change to any: another wrap


def _same_wrap(a: dict, b: dict, who: str) -> bool:
    return all(a[f"{who}_{f}"] == b[f"{who}_{f}"] for f in PIN_RECORD) and a["epoch"] == b["epoch"]


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


# --- keys from the master key, records sealed whole, the object list ------------
class MasterKeys(NamedTuple):
    """Keys derived from the master key (so only a PIN holder has them), one per use."""
    record: bytes      # seals an object's record whole (the envelope)
    blind: bytes       # keyed hashes of private objects' labels and IDs in the index
    listing: bytes     # the authenticated list of private objects (the manifest)


def master_keys(master: bytes) -> MasterKeys:
    return MasterKeys(*(hmac.new(master, b"ferrohsm " + use + b" v1", hashlib.sha256).digest()
                        for use in (b"record", b"index", b"manifest")))


def _envelope_aad(serial: str, uid: str, version: int, header: bytes) -> bytes:
    return _lp(b"record", serial.encode(), uid.encode(), _ULONG.pack(version), header)


def envelope(rkey: bytes, serial: str, uid: str, version: int, header: bytes, inner: bytes) -> bytes:
    """ENVELOPE | len(header) | header | AES-GCM(record key, inner), the additional data
    binding token, object, version and header: no byte of it changes, and it opens as
    no other object or version, without the master key."""
    sealed = _gcm_seal(rkey, inner, _envelope_aad(serial, uid, version, header))
    return bytes([ENVELOPE]) + _LEN.pack(len(header)) + header + sealed


def split_envelope(record: bytes) -> tuple:
    """(header, sealed body); ValueError if malformed."""
    if len(record) < 1 + _LEN.size:
        raise ValueError("record truncated")
    n = _LEN.unpack_from(record, 1)[0]
    if 1 + _LEN.size + n > len(record):
        raise ValueError("record truncated")
    return record[1 + _LEN.size:1 + _LEN.size + n], record[1 + _LEN.size + n:]


def open_envelope(rkey: bytes, serial: str, uid: str, version: int, record: bytes) -> bytes:
    """The inner record; InvalidTag or ValueError if it is not what was sealed."""
    header, body = split_envelope(record)
    return _gcm_open(rkey, body, _envelope_aad(serial, uid, version, header))


def header_of(record: bytes) -> dict:
    """What a record says in clear: an envelope's header, or a plain record whole."""
    return records.unpack(split_envelope(record)[0] if record[:1] == bytes([ENVELOPE]) else record)


def listing_of(lkey: bytes, items) -> int:
    """The object list's digest: XOR of a keyed hash (BLAKE2b keyed with the list key: a
    PRF) of each (uid, version). Kept sealed (seal_listing), so a file reader learns
    nothing of it and cannot fit it to a list. (Names bound once: a login hashes every
    private object.)"""
    digest, pack, mac, of = 0, _ULONG.pack, hashlib.blake2b, int.from_bytes
    for uid, version in items:
        digest ^= of(mac(pack(version) + uid.encode(), key=lkey, digest_size=32).digest(), "big")
    return digest


def _listed(uid: str, version: int, attrs) -> tuple:
    """index()'s row for a record read whole: (uid, version, index entry, attrs or None)."""
    if isinstance(attrs, Locked):
        return uid, version, attrs.stub, None
    return uid, version, stub_of(attrs), attrs


def _listing_aad(serial: str, epoch: int) -> bytes:
    return _lp(b"manifest", serial.encode(), _ULONG.pack(epoch))


def seal_listing(lkey: bytes, serial: str, epoch: int, digest: int) -> bytes:
    return _gcm_seal(lkey, digest.to_bytes(32, "big"), _listing_aad(serial, epoch))


def open_listing(lkey: bytes, serial: str, epoch: int, blob: bytes) -> int:
    return int.from_bytes(_gcm_open(lkey, blob, _listing_aad(serial, epoch)), "big")


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
                "so_kdf", "so_tries", "user_kdf", "user_tries", "manifest",     # (schema 3)
                "anchor")                                                       # (schema 4)
NO_USER_PIN = {"user_salt": None, "user_iters": None, "user_wrap": None, "user_fail": 0,
               "user_kdf": None, "user_tries": None}


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

    def __init__(self, max_pin_failures: int = 10, pin_policy: PinPolicy = PinPolicy()):
        self.max_failures = max_pin_failures
        self.pins = pin_policy
        self._lock = threading.RLock()
        self._master: bytes | None = None
        self._master_epoch: int | None = None
        self._mkeys: MasterKeys | None = None
        self._blinds: tuple = (None, {})     # (the master keys they were made with, (cka, value) -> blind)
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

    def _scrub(self) -> None:
        """After records were sealed anew: make the store drop the old bytes it still
        holds where it can (a store that keeps none, or cannot, does nothing)."""

    @abstractmethod
    def _counter(self, name: str) -> int | None: ...

    @abstractmethod
    def _set_counter(self, name: str, value: int) -> None: ...

    @abstractmethod
    def _audit_last(self, table: str) -> tuple | None:
        """(seq, digest) of the last row of an audit table (AUDIT_TABLES), or None."""

    @abstractmethod
    def _audit_put(self, table: str, rows: list) -> None:
        """Append rows (seq, digest, data) in the open write transaction."""

    @abstractmethod
    def _audit_rows(self, table: str, after: int, limit: int) -> list:
        """Up to `limit` rows with seq > after, in seq order, as one snapshot."""

    @abstractmethod
    def _audit_delete(self, through: int) -> int:
        """In the open write transaction: delete records with seq <= through and
        checkpoints with seq < through; the number of records deleted."""

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
            serial = self.anchor.fresh_serial() if fresh else self._check_pin("so", so_pin, rewrap=False)[1]["serial"]
            master = os.urandom(KEY_LEN)
            fields = {"label": bytes(label), "serial": serial, "pub_key": os.urandom(KEY_LEN),
                      "so_fail": 0, **NO_USER_PIN,
                      **wrap_master(master, so_pin, serial, "so", self.pins.kdf)}
            epoch = self._token()["epoch"] + 1 if not fresh else 1
            fields["manifest"] = seal_listing(master_keys(master).listing, serial, epoch, 0)
            if fresh:
                self._create({**fields, "epoch": 1, "seq": 0, "pruned": 0, "anchor": None})
                self.verify_anchor()            # anchors the new record
            else:
                with self._write():
                    if self._token()["epoch"] + 1 != epoch:
                        raise PKCS11Error(C.CKR_DEVICE_ERROR, "token re-initialized meanwhile")
                    for uid in self._uids():
                        self._delete(uid)
                    self._update({**fields, "epoch": epoch})
            self.logout()
            self._keys = None

    def verify_anchor(self) -> None:
        """Refuse a token record its TPM anchor does not vouch for (CKR_DEVICE_ERROR);
        adopt a record made without one.  In a write transaction: writers take turns."""
        if self.anchor.on:
            with self._write():
                pass

    # PINs -----------------------------------------------------------------------------
    def _check_pin(self, who: str, pin: bytes, slow=nullcontext, locked_too: bool = False,
                   rewrap: bool = True) -> tuple:
        """(master key, token record) if `pin` is `who`'s PIN.

        A try counts before anyone knows its answer, and once, however often its process dies:
          1. wait PinPolicy.delay(failures so far), then derive the KEK (slow: in `slow()`,
             outside the store's lock; nothing written, nothing known yet);
          2. one write transaction: a locked PIN is refused (CKR_PIN_LOCKED; not with
             `locked_too`: the file owner's unlock-pin); the try's tag, try_tag(KEK), is
             recorded in `{who}_tries` and counted in `{who}_fail` unless it is recorded
             already; committed;
          3. only then the GCM unwrap.  Right: count and tags cleared (and the master key
             wrapped again if the stored KDF is below the policy's, unless `rewrap` is false:
             the caller wraps it anew).  Wrong: the count stays and the tag goes, so the same
             wrong PIN counts again next time.
        Killed before 2, a process counted nothing and learned nothing; killed after 2, its
        try stays counted and its tag stays, so a retry of the same PIN (a service that
        restarts) is not counted again: it gets the answer its first try paid for.  So
        kill-to-guess still pays one count per PIN it learns about, and a service killed in
        its logins again and again does not lock itself out.  A wrong PIN that reaches the
        limit answers CKR_PIN_INCORRECT; every try after that CKR_PIN_LOCKED.  Tries of one
        PIN at the same time may count once: they are one guess."""
        kek, tag, tok = self._count_try(who, pin, slow, locked_too)
        master = unwrap_master(tok, kek, who)
        if master is None:
            self._settle(who, tok, drop=tag)
            raise PKCS11Error(C.CKR_PIN_INCORRECT)
        fields = {f"{who}_fail": 0, f"{who}_tries": None}
        if rewrap and (tok[f"{who}_kdf"] is None or Argon2id.parse(tok[f"{who}_kdf"]).below(self.pins.kdf)):
            with slow():                   # an older wrap: Argon2id with today's cost
                fields.update(wrap_master(master, pin, tok["serial"], who, self.pins.kdf))
        self._settle(who, tok, fields)
        return master, tok

    def _count_try(self, who: str, pin: bytes, slow, locked_too: bool) -> tuple:
        """Steps 1 and 2 of _check_pin: (KEK, its tag, token record) once the try is committed."""
        tok = self._token()
        for _ in range(3):                 # again if the wrap changed during the derivation
            if tok[f"{who}_wrap"] is None:
                raise PKCS11Error(C.CKR_USER_PIN_NOT_INITIALIZED)
            self._refuse_locked(tok, who, locked_too)
            with slow():
                time.sleep(0 if locked_too else self.pins.delay(tok[f"{who}_fail"]))
                kek = pin_kek(tok, who, pin)
            tag = try_tag(kek)
            with self._write():
                now = self._token()
                if _same_wrap(now, tok, who):
                    self._refuse_locked(now, who, locked_too)
                    tags = _tags(now[f"{who}_tries"])
                    if tag not in tags:
                        self._update({f"{who}_fail": now[f"{who}_fail"] + 1,
                                      f"{who}_tries": b"".join((tags + [tag])[-self.max_failures:])})
                    return kek, tag, now
            tok = now
        raise PKCS11Error(C.CKR_FUNCTION_FAILED, f"the {who} PIN changed during every try")

    def _refuse_locked(self, tok: dict, who: str, locked_too: bool) -> None:
        if tok[f"{who}_fail"] >= self.max_failures and not locked_too:
            raise PKCS11Error(C.CKR_PIN_LOCKED, f"{who} PIN locked")

    def _settle(self, who: str, tok: dict, fields: dict | None = None, drop: bytes | None = None) -> None:
        """Step 3's write, if `who`'s wrap is still the one checked: `fields`, or the try
        tagged `drop` removed from the recorded ones (its count stays)."""
        with self._write():
            cur = self._token()
            if not _same_wrap(cur, tok, who):
                return
            if drop is not None:
                tags = _tags(cur[f"{who}_tries"])
                if drop not in tags:
                    return
                tags.remove(drop)
                fields = {f"{who}_tries": b"".join(tags) or None}
            self._update(fields)

    def unlock_pin(self, user_type: int, pin: bytes) -> None:
        """The token owner's recovery of a locked PIN (`ferrohsm unlock-pin`): the PIN is
        checked as by a login, except that a locked PIN is checked too; the right one
        clears the count.  It gives nothing to whoever can already write the store (who
        could rewrite the counter anyway) and needs the PIN."""
        self._check_pin(_who(user_type), pin, locked_too=True)

    def login(self, user_type: int, pin: bytes, slow=nullcontext) -> None:
        """Also checks the token's list of private objects (or, on a token from before
        schema 3, seals its records whole and makes the list): a failure logs out."""
        master, tok = self._check_pin(_who(user_type), pin, slow)
        with self._lock:
            self._master, self._master_epoch = master, tok["epoch"]
            self._mkeys = master_keys(master)
            try:
                self._check_listing()
            except BaseException:
                self.logout()
                raise

    def logout(self) -> None:
        with self._lock:
            self._master = self._master_epoch = self._mkeys = None

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
            fields = wrap_master(self._held(tok["epoch"]), pin, tok["serial"], "user", self.pins.kdf)
            with self._write():
                self._held(self._token()["epoch"])
                self._update({**fields, "user_fail": 0})

    def set_pin(self, user_type: int, old_pin: bytes, new_pin: bytes) -> None:
        with self._lock:
            who = _who(user_type)
            master, tok = self._check_pin(who, old_pin, rewrap=False)
            fields = wrap_master(master, new_pin, tok["serial"], who, self.pins.kdf)
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

    def _sealer(self, tok: dict, uid: str, guarded: bool):
        """seal(cka, raw) for the object's secret values: under the master key if the
        object is kept under it (base.under_master), else the public key."""
        serial, pub, _ = self._public(tok)
        key_id = MASTER if guarded else PUBLIC
        key = None

        def seal(cka: int, raw: bytes) -> bytes:
            nonlocal key
            if key is None:
                key = self._held(tok["epoch"]) if guarded else pub
            return seal_value(key_id, key, serial, uid, cka, raw)
        return seal

    def save_object(self, uid: str, attrs: dict, sensitive: frozenset, expect: int = 0,
                    lineage: str | None = None) -> int:
        with self._lock, self._write():
            row = self._at(uid, expect)
            tok = self._token()
            serial, _, tkey = self._public(tok)
            plain = {cka: attrtypes.decode(cka, self.unseal(uid, cka, v)) if isinstance(v, Sealed) else v
                     for cka, v in attrs.items()}
            version, guarded, private = expect + 1, under_master(plain), bool(plain.get(C.CKA_PRIVATE))
            record = records.pack(plain, sensitive, self._sealer(tok, uid, guarded))
            entry = self.entry_of(plain)
            if guarded:             # sealed whole; in clear: the index entry, or a public object's attributes
                header = records.pack(entry if private else plain, frozenset() if private else sensitive,
                                      lambda cka, raw: ENVELOPED)
                record = envelope(self._keys_held(tok).record, serial, uid, version, header, record)
            was_private = expect > 0 and self._stored_private(uid)
            if private or was_private:
                self._relist(tok, [(uid, expect)] if was_private else [], [(uid, version)] if private else [])
            self._put(uid, version, record, record_tag(tkey, serial, uid, record),
                      row[1] if row else (lineage or uid))
            self._put_index(uid, entry)
            return version

    def delete_object(self, uid: str, expect: int) -> None:
        with self._lock, self._write():
            if expect == 0:
                raise Conflict(uid)
            self._at(uid, expect)
            tok = self._token()
            if self._stored_private(uid):
                self._relist(tok, [(uid, expect)], [])
            self._delete(uid)
            tok = self._token()
            if tok["seq"] - tok["pruned"] > 2 * TOMBSTONE_WINDOW:
                self._prune(tok["seq"] - TOMBSTONE_WINDOW)
                self._update({"pruned": tok["seq"] - TOMBSTONE_WINDOW})

    # keys held, the index entry, the object list ------------------------------------------
    def _keys_held(self, tok: dict) -> MasterKeys:
        self._held(tok["epoch"])
        return self._mkeys

    def blind(self, cka: int, value) -> bytes | None:
        keys = self._mkeys
        if keys is None or type(value) is not bytes:
            return None
        memo = self._blinds           # every search by label or ID asks: remembered per master key
        if memo[0] is not keys:
            memo = self._blinds = (keys, {})
        got = memo[1].get((cka, value))
        if got is None:
            if len(memo[1]) >= BLIND_MEMO:
                memo[1].clear()
            got = memo[1][cka, value] = BLIND_MARK + hmac.new(keys.blind, _lp(_ULONG.pack(cka), value),
                                                              hashlib.sha256).digest()[:16]
        return got

    def entry_of(self, attrs: dict) -> dict:
        entry = stub_of(attrs)
        if entry.get(C.CKA_PRIVATE):
            for cka in BLINDED:
                if cka in entry:
                    entry[cka] = self.blind(cka, entry[cka])
                    if entry[cka] is None:
                        raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "a private object needs a login")
        return entry

    def _stored_private(self, uid: str) -> bool:
        got = self._get(uid)
        try:
            return got is not None and bool(header_of(got[1]).get(C.CKA_PRIVATE))
        except (ValueError, PKCS11Error):
            return False

    def _relist(self, tok: dict, out: list, into: list) -> None:
        """Take (uid, version) items out of the sealed list of private objects and put
        others in (in the caller's write transaction). A token from before schema 3
        has no list until its first login makes one (_check_listing)."""
        if tok["manifest"] is None:
            return
        lkey = self._keys_held(tok).listing
        try:
            digest = open_listing(lkey, tok["serial"], tok["epoch"], tok["manifest"])
        except InvalidTag:
            LOG.error("token %s: its object list fails its integrity check", tok["serial"])
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "the token's object list fails its integrity check") from None
        digest ^= listing_of(lkey, out + into)
        self._update({"manifest": seal_listing(lkey, tok["serial"], tok["epoch"], digest)})

    def _private_rows(self) -> tuple | None:
        """(token record, [(uid, version)] of the rows the store's index marks private,
        [uid of rows with no index entry]) in one snapshot, or None: no index kept.
        (The index is not trusted: a row it misrepresents makes the list check fail.)"""
        listed = self._index_rows()
        if listed is None:
            return None
        tok, entries = listed
        return (tok, [(uid, v) for uid, v, stub, _ in entries if stub is not None and stub.get(C.CKA_PRIVATE)],
                [uid for uid, _, stub, _ in entries if stub is None])

    def _private_items(self) -> tuple:
        """(token record, [(uid, version)] of every stored private object), one snapshot."""
        listed = self._private_rows()
        if listed is None:
            tok, rows, _ = self._since(None)
            return tok, [(uid, v) for uid, v, record, _ in rows if self._private_record(record)]
        tok, items, unlisted = listed
        for uid in unlisted:                    # rows from before the index columns: read them
            got = self._get(uid)
            if got is not None and self._private_record(got[1]):
                items.append((uid, got[0]))
        return tok, items

    @staticmethod
    def _private_record(record: bytes) -> bool:
        try:
            return bool(header_of(record).get(C.CKA_PRIVATE))
        except (ValueError, PKCS11Error):
            return True          # unreadable: counted, so the list check fails on it

    def _check_listing(self) -> None:
        """At login: the private objects stored are exactly those the sealed list names,
        each at its version - none deleted, added, or put back from an older copy."""
        tok, items = self._private_items()
        if tok["manifest"] is None:
            self._seal_whole()
            return
        lkey = self._keys_held(tok).listing
        try:
            ok = open_listing(lkey, tok["serial"], tok["epoch"], tok["manifest"]) == listing_of(lkey, items)
        except InvalidTag:
            ok = False
        if not ok:
            LOG.error("token %s: its private objects are not those it wrote (one deleted, added or "
                      "put back from an older copy); not served", tok["serial"])
            raise PKCS11Error(C.CKR_DEVICE_ERROR, "the token's object list fails its integrity check")

    def _seal_whole(self) -> None:
        """A token from before schema 3, at its first login: every record that belongs
        under the master key is written again sealed whole, and the list is made."""
        with self._write():
            tok = self._token()
            if tok["manifest"] is not None:
                return
            serial = tok["serial"]
            for uid in self._uids():
                got = self._get(uid)
                attrs = None if got is None else self._verified(tok, uid, got[0], got[1], got[2])
                if attrs is not None and not isinstance(attrs, Locked) and under_master(attrs):
                    sealed = frozenset(cka for cka, v in attrs.items() if isinstance(v, Sealed))
                    self.save_object(uid, attrs, sealed, got[0])
            tok = self._token()
            _, items = self._private_items()
            lkey = self._keys_held(tok).listing
            self._update({"manifest": seal_listing(lkey, serial, tok["epoch"], listing_of(lkey, items))})
        self._scrub()
        LOG.info("token %s: records sealed whole under the master key (schema 3)", serial)

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
            upserts = []
            for uid, version, record, tag in rows:
                attrs = self._verified(tok, uid, version, record, tag)
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
                return got.cursor, [_listed(uid, v, a) for uid, v, a in got.upserts]
            tok, entries = listed
            if self._master is not None and self._master_epoch != tok["epoch"]:
                self.logout()
            for i, (uid, _, stub, _) in enumerate(entries):
                if stub is None:                     # e.g. a row from before the index columns
                    got = self.load(uid)
                    entries[i] = None if got is None else _listed(uid, *got)
            return tok["seq"], [e for e in entries if e is not None] if None in entries else entries

    def load(self, uid: str) -> tuple | None:
        with self._lock:
            row = self._get(uid)
            if row is None:
                return None
            attrs = self._verified(self._token(), uid, row[0], row[1], row[2])
            return None if attrs is None else (row[0], attrs)

    def _verified(self, tok: dict, uid: str, version: int, record: bytes, tag: bytes):
        """The record's attributes (Sealed placeholders for sealed values); Locked for a
        private object while no one is logged in; None (logged) if it fails a check:
        its tag, its envelope, or a record in clear that belongs sealed whole."""
        serial, _, tkey = self._public(tok)
        if hmac.compare_digest(record_tag(tkey, serial, uid, record), tag):
            try:
                return self._opened(tok, uid, version, record)
            except (ValueError, PKCS11Error, InvalidTag):
                pass
        LOG.warning("token %s: object %s fails its integrity check; not served", serial, uid)
        return None

    def _opened(self, tok: dict, uid: str, version: int, record: bytes):
        if record[:1] != bytes([ENVELOPE]):
            attrs = records.unpack(record)
            if tok["manifest"] is not None and under_master(attrs):
                raise ValueError("a record in clear that belongs sealed whole")
            return attrs
        header = records.unpack(split_envelope(record)[0])
        keys = self._mkeys if self._master is not None and self._master_epoch == tok["epoch"] else None
        if keys is None:
            return Locked(header) if header.get(C.CKA_PRIVATE) else header
        attrs = records.unpack(open_envelope(keys.record, tok["serial"], uid, version, record))
        if bool(attrs.get(C.CKA_PRIVATE)) != bool(header.get(C.CKA_PRIVATE)):
            raise ValueError("header and record disagree")
        return attrs

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
            if blob == ENVELOPED:            # loaded before a login: its record is read again
                self._held(epoch)
                got = self.load(uid)
                inner = None if got is None or isinstance(got[1], Locked) else got[1].get(cka)
                if not isinstance(inner, Sealed) or inner.blob == ENVELOPED:
                    raise PKCS11Error(C.CKR_DEVICE_ERROR, "sealed value fails its integrity check")
                blob = inner.blob
            key = self._held(epoch) if blob[:1] == MASTER else pub
            try:
                if blob[:1] not in (MASTER, PUBLIC):
                    raise InvalidTag()
                return open_value(key, serial, uid, cka, blob)
            except InvalidTag:
                LOG.error("token %s: sealed %s of object %s fails its integrity check",
                          serial, C.name_of("CKA_", cka), uid)
                raise PKCS11Error(C.CKR_DEVICE_ERROR, "sealed value fails its integrity check") from None

    # the audit log (base.TokenStore.audit_*) ------------------------------------------
    def audit_head(self) -> tuple:
        with self._lock:
            last = self._audit_last("records") or self._audit_last("checkpoints")
            return (last[0], bytes(last[1])) if last else (0, b"")

    def audit_append(self, rows: list) -> None:
        if not rows:
            return
        with self._lock, self._write():
            seq = self.audit_head()[0]
            if [r[0] for r in rows] != list(range(seq + 1, seq + 1 + len(rows))):
                raise Conflict(f"audit record {rows[0][0]} (the log is at {seq})")
            self._audit_put("records", [(s, bytes(d), bytes(data)) for s, d, data in rows])

    def audit_read(self, after: int, limit: int) -> list:
        with self._lock:
            return [(s, bytes(d), bytes(data)) for s, d, data in self._audit_rows("records", after, limit)]

    def audit_put_checkpoint(self, seq: int, digest: bytes, data: bytes) -> None:
        with self._lock, self._write():
            last = self._audit_last("checkpoints")
            if seq > self.audit_head()[0] or (last is not None and seq <= last[0]):
                raise ValueError(f"checkpoint at {seq}: beyond the log or not after the last one")
            self._audit_put("checkpoints", [(seq, bytes(digest), bytes(data))])

    def audit_checkpoints(self, after: int = -1) -> list:
        with self._lock:
            return [(s, bytes(d), bytes(data)) for s, d, data in self._audit_rows("checkpoints", after, 1 << 62)]

    def audit_prune(self, through: int) -> int:
        with self._lock, self._write():
            if not any(s == through for s, _, _ in self._audit_rows("checkpoints", through - 1, 1)):
                raise ValueError(f"no checkpoint at record {through} to keep as the anchor")
            return self._audit_delete(through)

    def close(self) -> None:
        self.logout()
