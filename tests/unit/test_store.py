"""The token store's behaviour, once for the SQLite store and once for the memory
store: PINs and their counters, sealing, integrity, changes seen by a second store
object on the same token. SQLite-only matters (files, processes) are in
test_store_sqlite.py."""

import hashlib
import logging
import os
from types import SimpleNamespace

import pytest
from cryptography.exceptions import InvalidTag

from provider import constants as C
from provider.errors import PKCS11Error
from provider.store import records, sealing
from provider.store.base import Conflict, Locked, Sealed

from .stores import FAST, KINDS

SO, USER = b"so-pin-1", b"user-pin-1"
LABEL = b"store test".ljust(32)
MAX = 4
SECRET = b"\x13\x37" + b"TOP-SECRET-KEY-MATERIAL-0123456789"
AES_SECRET = frozenset({C.CKA_VALUE})


def rv(fn, *args):
    try:
        fn(*args)
    except PKCS11Error as exc:
        return exc.rv
    return C.CKR_OK


class Backend:
    """One token of one store kind (tests/unit/stores.py)."""

    def __init__(self, kind):
        self.kind_name = kind.name
        self._kind = kind

    def open(self, max_failures=MAX):
        return self._kind.open(max_failures)

    def row(self, uid):
        return self._kind.row(uid)

    def set_row(self, uid, record, tag):
        self._kind.set_row(uid, record, tag)


@pytest.fixture(params=sorted(KINDS))
def backend(request, tmp_path):
    return Backend(KINDS[request.param](tmp_path, request))


@pytest.fixture
def store(backend):
    s = backend.open()
    s.initialize(LABEL, SO)
    s.login(C.CKU_SO, SO)
    s.init_pin(USER)
    s.logout()
    yield s
    s.close()


def aes_key(label=b"k", private=True, value=SECRET):
    """A private key is sensitive; a public one not (a sensitive one is kept under the
    master key like a private one: test_sensitive_public_key_needs_the_master_key)."""
    return {C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: C.CKK_AES, C.CKA_TOKEN: True,
            C.CKA_PRIVATE: private, C.CKA_LABEL: label, C.CKA_VALUE: value,
            C.CKA_SENSITIVE: private, C.CKA_SIGN: False}


def feed(store, cursor):
    """changes(cursor) as (cursor, [(uid, attrs)], deleted)."""
    got = store.changes(cursor)
    return got.cursor, [(uid, attrs) for uid, _, attrs in got.upserts], got.deleted


def load(store, cursor=None):
    return dict(feed(store, cursor)[1])


# --- token record and PINs ------------------------------------------------------
def test_fresh_store_then_initialized(backend):
    s = backend.open()
    assert not s.initialized()
    s.initialize(LABEL, SO)
    assert s.initialized() and s.label == LABEL
    assert len(s.serial) == 16 and s.serial.isprintable()
    assert not s.user_pin_initialized() and s.pin_flags() == 0
    assert rv(s.login, C.CKU_USER, USER) == C.CKR_USER_PIN_NOT_INITIALIZED
    assert rv(s.login, 7, USER) == C.CKR_USER_TYPE_INVALID


@pytest.mark.parametrize("who", [C.CKU_SO, C.CKU_USER])
def test_pin_failures_flags_and_lock(store, backend, who):
    right = SO if who == C.CKU_SO else USER
    low, final, locked = sealing.PIN_FLAGS[sealing.WHO[who]]
    store.login(who, right)
    store.logout()
    expected = {1: low, MAX - 1: low | final, MAX: low | locked}
    for n in range(1, MAX + 1):
        assert rv(store.login, who, b"wrong-pin") == C.CKR_PIN_INCORRECT
        if n in expected:
            assert store.pin_flags() == expected[n], n
    assert rv(store.login, who, right) == C.CKR_PIN_LOCKED
    assert rv(store.login, who, b"wrong-pin") == C.CKR_PIN_LOCKED
    assert backend.open().pin_flags() == low | locked     # durable, seen by a new store object


def test_success_resets_counter(store):
    for _ in range(MAX - 1):
        assert rv(store.login, C.CKU_USER, b"nope") == C.CKR_PIN_INCORRECT
    store.login(C.CKU_USER, USER)
    assert store.pin_flags() == 0


def test_init_pin_unlocks_user_and_needs_so(store):
    assert rv(store.init_pin, b"new-user") == C.CKR_USER_NOT_LOGGED_IN
    for _ in range(MAX):
        rv(store.login, C.CKU_USER, b"nope")
    assert store.pin_flags() & C.CKF_USER_PIN_LOCKED
    store.login(C.CKU_SO, SO)
    store.init_pin(b"new-user")
    store.logout()
    assert store.pin_flags() == 0
    assert rv(store.login, C.CKU_USER, USER) == C.CKR_PIN_INCORRECT
    store.login(C.CKU_USER, b"new-user")


@pytest.mark.parametrize("who,old", [(C.CKU_SO, SO), (C.CKU_USER, USER)])
def test_set_pin(store, backend, who, old):
    assert rv(store.set_pin, who, b"not-it", b"next-pin") == C.CKR_PIN_INCORRECT
    store.set_pin(who, old, b"next-pin")
    other = backend.open()
    assert rv(other.login, who, old) == C.CKR_PIN_INCORRECT
    other.login(who, b"next-pin")


def test_set_pin_keeps_master_key(store):
    store.login(C.CKU_USER, USER)
    store.save_object("u1", aes_key(), AES_SECRET)
    store.set_pin(C.CKU_USER, USER, b"next-pin")
    store.logout()
    store.login(C.CKU_USER, b"next-pin")
    obj = load(store)["u1"]
    assert store.unseal("u1", C.CKA_VALUE, obj[C.CKA_VALUE]) == SECRET


def test_so_locked_refuses_init_token(store):
    for _ in range(MAX):
        rv(store.initialize, LABEL, b"wrong-so")
    assert store.pin_flags() & C.CKF_SO_PIN_LOCKED
    assert rv(store.initialize, LABEL, SO) == C.CKR_PIN_LOCKED


def test_reinitialize_wipes_objects_keeps_serial(store, backend):
    serial = store.serial
    store.login(C.CKU_USER, USER)
    store.save_object("u1", aes_key(), AES_SECRET)
    store.logout()
    watcher = backend.open()
    cursor, _, _ = feed(watcher, None)
    assert rv(store.initialize, LABEL, b"wrong-so") == C.CKR_PIN_INCORRECT
    store.initialize(b"renamed".ljust(32), SO)
    assert store.serial == serial and store.label == b"renamed".ljust(32)
    assert not store.user_pin_initialized()
    assert load(store) == {}
    _, upserts, deleted = feed(watcher, cursor)
    assert upserts == [] and deleted == ["u1"]
    store.login(C.CKU_SO, SO)                     # SO PIN still valid under the new master key


# --- the PIN KDF, killed logins, delays, unlock (issue 11) ---------------------------
PINS = {C.CKU_SO: SO, C.CKU_USER: USER}


class Killed(BaseException):
    """The process died here (as by SIGKILL: nothing after it runs)."""


def die(*args):
    raise Killed()


def legacy_wrap(store, who: str, pin: bytes, iterations: int = 1000) -> None:
    """Rewrite `who`'s wrap as the previous releases wrote it: PBKDF2-HMAC-SHA256, no KDF text."""
    store.login(C.CKU_SO, SO)
    master, serial = store._master, store.serial
    store.logout()
    salt = os.urandom(16)
    kek = hashlib.pbkdf2_hmac("sha256", pin, salt, iterations, 32)
    with store._write():
        store._update({f"{who}_salt": salt, f"{who}_iters": iterations, f"{who}_kdf": None,
                       f"{who}_wrap": sealing._gcm_seal(kek, master, sealing._lp(serial.encode(), who.encode()))})


@pytest.mark.parametrize("who", [C.CKU_SO, C.CKU_USER])
def test_pin_wrap_is_argon2id_with_its_parameters_stored(store, backend, who):
    w = sealing.WHO[who]
    tok = backend.open()._token()
    assert tok[f"{w}_kdf"] == FAST.kdf.text() == "argon2id$v=19$m=64,t=1,p=1"
    assert tok[f"{w}_iters"] is None and len(tok[f"{w}_salt"]) == 16
    kek = sealing.derive_kek(PINS[who], tok[f"{w}_salt"], tok[f"{w}_kdf"], None)
    assert sealing.unwrap_master(tok, kek, w) is not None            # the stored parameters are the ones


@pytest.mark.parametrize("who", [C.CKU_SO, C.CKU_USER])
def test_pbkdf2_wrap_is_wrapped_again_with_argon2id_at_login(store, backend, who):
    w = sealing.WHO[who]
    legacy_wrap(store, w, PINS[who])
    other = backend.open()
    assert other._token()[f"{w}_kdf"] is None
    other.login(who, PINS[who])                                     # the old wrap opens ...
    other.logout()
    tok = backend.open()._token()
    assert tok[f"{w}_kdf"] == FAST.kdf.text() and tok[f"{w}_iters"] is None   # ... and is replaced
    third = backend.open()
    third.login(who, PINS[who])
    third.logout()
    assert rv(third.login, who, b"wrong-pin") == C.CKR_PIN_INCORRECT


def test_cheaper_argon2id_wrap_grows_a_dearer_one_stays(store, backend):
    dearer = sealing.PinPolicy(sealing.Argon2id(128, 2, 1), 0.0)
    grown = backend.open()
    grown.pins = dearer
    grown.login(C.CKU_USER, USER)
    assert backend.open()._token()["user_kdf"] == dearer.kdf.text()
    store.login(C.CKU_USER, USER)                                   # FAST policy: no downgrade
    assert backend.open()._token()["user_kdf"] == dearer.kdf.text()


def test_login_killed_after_its_try_was_counted_counts_once(store, backend, monkeypatch):
    """A service killed during correct-PIN logins, more times than the limit, is not locked
    out: the try is counted once (its tag stays recorded) and the next login succeeds."""
    monkeypatch.setattr(sealing, "unwrap_master", die)             # killed right after the count
    for _ in range(MAX + 2):
        with pytest.raises(Killed):
            backend.open().login(C.CKU_USER, USER)
    tok = backend.open()._token()
    assert tok["user_fail"] == 1 and len(tok["user_tries"]) == sealing.TAG_LEN
    assert USER not in tok["user_tries"]
    assert store.pin_flags() == C.CKF_USER_PIN_COUNT_LOW
    monkeypatch.undo()
    store.login(C.CKU_USER, USER)
    tok = backend.open()._token()
    assert store.pin_flags() == 0 and tok["user_fail"] == 0 and not tok["user_tries"]


def test_kill_to_guess_still_counts_every_guess(store, backend, monkeypatch):
    monkeypatch.setattr(sealing, "unwrap_master", die)
    for n in range(MAX):
        with pytest.raises(Killed):
            backend.open().login(C.CKU_USER, b"guess-%d" % n)
    monkeypatch.undo()
    assert store.pin_flags() & C.CKF_USER_PIN_LOCKED
    assert rv(store.login, C.CKU_USER, USER) == C.CKR_PIN_LOCKED


def test_a_killed_wrong_guess_answered_later_counts_once_more_when_repeated(store, monkeypatch):
    monkeypatch.setattr(sealing, "unwrap_master", die)
    with pytest.raises(Killed):
        store.login(C.CKU_USER, b"guess-0")
    monkeypatch.undo()
    assert rv(store.login, C.CKU_USER, b"guess-0") == C.CKR_PIN_INCORRECT    # the owed answer: no count
    assert store._token()["user_fail"] == 1 and not store._token()["user_tries"]
    assert rv(store.login, C.CKU_USER, b"guess-0") == C.CKR_PIN_INCORRECT    # asked again: counted
    assert store._token()["user_fail"] == 2


def test_failure_delay_doubles_and_is_capped(store, monkeypatch):
    slept = []
    monkeypatch.setattr(sealing, "time", SimpleNamespace(sleep=slept.append))
    store.pins = sealing.PinPolicy(FAST.kdf, failure_delay=0.5)
    store.max_failures = 8
    for _ in range(8):
        assert rv(store.initialize, LABEL, b"wrong-so") == C.CKR_PIN_INCORRECT
    assert slept == [0, 0.5, 1, 2, 4, 8, 8, 8]
    assert rv(store.initialize, LABEL, SO) == C.CKR_PIN_LOCKED and len(slept) == 8   # locked: no wait
    store.login(C.CKU_USER, USER)
    assert slept[-1] == 0


def test_unlock_pin_needs_the_pin_and_clears_the_lock(store, backend):
    for _ in range(MAX):
        rv(store.initialize, LABEL, b"wrong-so")
    assert rv(store.initialize, LABEL, SO) == C.CKR_PIN_LOCKED
    assert rv(store.unlock_pin, C.CKU_SO, b"wrong-so") == C.CKR_PIN_INCORRECT
    assert store.pin_flags() & C.CKF_SO_PIN_LOCKED
    backend.open().unlock_pin(C.CKU_SO, SO)
    assert store.pin_flags() == 0
    store.initialize(LABEL, SO)


# --- objects ------------------------------------------------------------------------
EVERY_KIND = {
    C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: C.CKK_EC, C.CKA_TOKEN: True,
    C.CKA_PRIVATE: True, C.CKA_LABEL: b"every kind \x00\xff", C.CKA_ID: b"",
    C.CKA_START_DATE: b"20240131", C.CKA_END_DATE: b"",
    C.CKA_ALLOWED_MECHANISMS: (C.CKM_ECDSA, C.CKM_ECDSA_SHA256),
    C.CKA_UNWRAP_TEMPLATE: ((C.CKA_CLASS, C.CKO_SECRET_KEY), (C.CKA_SENSITIVE, True), (C.CKA_LABEL, b"x")),
    C.CKA_EC_PARAMS: bytes.fromhex("06082a8648ce3d030107"), C.CKA_VALUE: SECRET,
    C.CKA_SIGN: True, C.CKA_DERIVE: False,
}


def test_round_trip_every_kind(store, backend):
    store.login(C.CKU_USER, USER)
    store.save_object("every", EVERY_KIND, frozenset({C.CKA_VALUE}))
    store.logout()
    other = backend.open()
    locked = load(other)["every"]               # no login: the index entry only, label and ID blinded
    assert isinstance(locked, Locked) and locked.stub[C.CKA_CLASS] == C.CKO_PRIVATE_KEY
    assert locked.stub[C.CKA_LABEL] != EVERY_KIND[C.CKA_LABEL] and locked.stub[C.CKA_ID] != b""
    other.login(C.CKU_USER, USER)
    got = load(other)["every"]
    assert isinstance(got[C.CKA_VALUE], Sealed)
    assert {k: v for k, v in got.items() if k != C.CKA_VALUE} == \
        {k: v for k, v in EVERY_KIND.items() if k != C.CKA_VALUE}
    assert locked.stub == other.entry_of(got)
    assert other.unseal("every", C.CKA_VALUE, got[C.CKA_VALUE]) == SECRET
    other.logout()
    assert rv(other.unseal, "every", C.CKA_VALUE, got[C.CKA_VALUE]) == C.CKR_USER_NOT_LOGGED_IN


def test_private_record_shows_nothing_in_clear(store, backend):
    """Every attribute of a private object is sealed; the index holds its label and ID
    as keyed hashes, which a logged-in reader computes to search."""
    store.login(C.CKU_USER, USER)
    data = {C.CKA_CLASS: C.CKO_DATA, C.CKA_TOKEN: True, C.CKA_PRIVATE: True, C.CKA_LABEL: b"LABEL-IN-CLEAR?",
            C.CKA_APPLICATION: b"APP-IN-CLEAR?", C.CKA_VALUE: b"VALUE-IN-CLEAR?", C.CKA_OBJECT_ID: b"\x06\x03OID?"}
    store.save_object("d", data, frozenset())
    record, _ = backend.row("d")
    for value in data.values():
        if isinstance(value, bytes):
            assert value not in record
    entry = store.entry_of(data)
    assert entry[C.CKA_LABEL] == store.blind(C.CKA_LABEL, b"LABEL-IN-CLEAR?") != b"LABEL-IN-CLEAR?"
    store.logout()
    assert store.blind(C.CKA_LABEL, b"LABEL-IN-CLEAR?") is None


def test_sensitive_public_key_needs_the_master_key(store, backend):
    """A public key that is sensitive, never extractable or trusted is sealed under the
    master key (never under the public key kept in the file) and used only after a login."""
    for uid, flags in (("s", {C.CKA_SENSITIVE: True}), ("x", {C.CKA_EXTRACTABLE: False}), ("t", {C.CKA_TRUSTED: True})):
        key = {**aes_key(b"pub", private=False), **flags}
        assert rv(store.save_object, uid, key, AES_SECRET) == C.CKR_USER_NOT_LOGGED_IN
        store.login(C.CKU_SO, SO)                        # the SO makes trusted keys
        store.save_object(uid, key, AES_SECRET)
        store.logout()
        other = backend.open()
        got = load(other)[uid]                         # public: visible without a login
        assert got[C.CKA_LABEL] == b"pub" and isinstance(got[C.CKA_VALUE], Sealed)
        assert rv(other.unseal, uid, C.CKA_VALUE, got[C.CKA_VALUE]) == C.CKR_USER_NOT_LOGGED_IN
        tok = other._token()                            # a file reader has the public key: no use
        record, _ = backend.row(uid)
        assert record[:1] == bytes([sealing.ENVELOPE]) and SECRET not in record
        with pytest.raises(InvalidTag):
            sealing.open_envelope(tok["pub_key"], tok["serial"], uid, 1, record)
        other.login(C.CKU_USER, USER)
        assert other.unseal(uid, C.CKA_VALUE, got[C.CKA_VALUE]) == SECRET
        assert other.unseal(uid, C.CKA_VALUE, load(other)[uid][C.CKA_VALUE]) == SECRET
        other.delete_object(uid, 1)
        other.close()


def test_envelope_tampered_or_replaced_in_clear_not_served(store, backend, caplog):
    """Whoever can write the file cannot change a private object (flip CKA_SENSITIVE,
    CKA_EXTRACTABLE ...) even re-tagging the record, nor put a record in clear in its place."""
    store.login(C.CKU_USER, USER)
    store.save_object("k", aes_key(), AES_SECRET)
    record, _ = backend.row("k")
    tok = store._token()
    tkey = sealing.tag_key(tok["pub_key"])
    clear = records.pack({**aes_key(), C.CKA_SENSITIVE: False, C.CKA_EXTRACTABLE: True}, frozenset(), None)
    for bad in (_flip(record, len(record) - 20), _flip(record, 8), clear):
        backend.set_row("k", bad, sealing.record_tag(tkey, tok["serial"], "k", bad))
        with caplog.at_level(logging.WARNING, logger="ferrohsm"):
            assert "k" not in load(store)               # read by a logged-in process: refused
        assert rv(backend.open().login, C.CKU_USER, USER) == C.CKR_DEVICE_ERROR   # and the list
    assert "not served" in caplog.text


def test_rolled_back_private_object_refused_at_login(store, backend, caplog):
    """The sealed list of private objects (uid, version) catches a record put back from
    an older copy, even one that opens: the next login is refused."""
    store.login(C.CKU_USER, USER)
    store.save_object("k", aes_key(b"v1"), AES_SECRET)
    old = backend.row("k")
    store.save_object("k", {**aes_key(b"v2"), C.CKA_SIGN: False}, AES_SECRET, expect=1)
    store.logout()
    backend.set_row("k", *old)                 # (set_row moves the version on: it is 3 now)
    with caplog.at_level(logging.ERROR, logger="ferrohsm"):
        assert rv(backend.open().login, C.CKU_USER, USER) == C.CKR_DEVICE_ERROR
    assert "not those it wrote" in caplog.text


def test_public_object_readable_without_login(store, backend):
    store.save_object("pub", aes_key(private=False), AES_SECRET)
    got = load(backend.open())["pub"]
    assert backend.open().unseal("pub", C.CKA_VALUE, got[C.CKA_VALUE]) == SECRET


def test_private_object_needs_login_to_save(store):
    assert rv(store.save_object, "p", aes_key(), AES_SECRET) == C.CKR_USER_NOT_LOGGED_IN
    assert rv(store.save_object, "d", {C.CKA_CLASS: C.CKO_DATA, C.CKA_PRIVATE: True}, frozenset()) == \
        C.CKR_USER_NOT_LOGGED_IN                  # sealed whole, even with no secret value
    assert load(store) == {}
    store.save_object("d", {C.CKA_CLASS: C.CKO_DATA, C.CKA_PRIVATE: False}, frozenset())


def test_resave_with_sealed_placeholder(store):
    """The engine may save attrs holding Sealed placeholders (e.g. after a label change)."""
    store.login(C.CKU_USER, USER)
    store.save_object("u1", aes_key(), AES_SECRET)
    attrs = load(store)["u1"]
    store.save_object("u1", {**attrs, C.CKA_LABEL: b"renamed"}, AES_SECRET, expect=1)
    again = load(store)["u1"]
    assert again[C.CKA_LABEL] == b"renamed"
    assert store.unseal("u1", C.CKA_VALUE, again[C.CKA_VALUE]) == SECRET
    # a placeholder taken to another uid does not open there
    assert rv(store.save_object, "u2", attrs, AES_SECRET) == C.CKR_DEVICE_ERROR


def test_changes_seen_by_second_store(store, backend):
    store.login(C.CKU_USER, USER)
    other = backend.open()
    other.login(C.CKU_USER, USER)
    cursor, upserts, deleted = feed(other, None)
    assert upserts == [] and deleted == []
    assert feed(other, cursor) == (cursor, [], [])
    store.save_object("a", aes_key(b"a"), AES_SECRET)
    store.save_object("b", aes_key(b"b", private=False), AES_SECRET)
    cursor, upserts, deleted = feed(other, cursor)
    assert sorted(u for u, _ in upserts) == ["a", "b"] and deleted == []
    store.save_object("a", aes_key(b"a2"), AES_SECRET, expect=1)
    store.delete_object("b", 1)
    cursor, upserts, deleted = feed(other, cursor)
    assert [(u, a[C.CKA_LABEL]) for u, a in upserts] == [("a", b"a2")] and deleted == ["b"]
    assert feed(other, cursor) == (cursor, [], [])
    with pytest.raises(Conflict):                 # deleting what is not there: a conflict,
        store.delete_object("missing", 1)         # and nothing changes
    assert feed(other, cursor) == (cursor, [], [])


# --- integrity --------------------------------------------------------------------
def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1:]


def test_flipped_sealed_byte_is_device_error(store, caplog):
    store.login(C.CKU_USER, USER)
    store.save_object("u1", aes_key(), AES_SECRET)
    blob = load(store)["u1"][C.CKA_VALUE].blob
    for pos in (0, 5, len(blob) - 1):
        with caplog.at_level(logging.ERROR, logger="ferrohsm"):
            assert rv(store.unseal, "u1", C.CKA_VALUE, Sealed(_flip(blob, pos))) == C.CKR_DEVICE_ERROR
    assert "fails its integrity check" in caplog.text
    assert SECRET.hex() not in caplog.text and SECRET.decode("latin1") not in caplog.text
    # moved to another object or another attribute: refused too
    assert rv(store.unseal, "u2", C.CKA_VALUE, Sealed(blob)) == C.CKR_DEVICE_ERROR
    assert rv(store.unseal, "u1", C.CKA_PRIME_1, Sealed(blob)) == C.CKR_DEVICE_ERROR


def test_sealed_tamper_with_forged_record_tag(store, backend):
    """Someone who can read the file can recompute the record tag (public key);
    a changed sealed value still fails when opened."""
    store.save_object("pub", aes_key(private=False), AES_SECRET)
    record, _ = backend.row("pub")
    pos = record.index(load(store)["pub"][C.CKA_VALUE].blob) + 20
    bad = _flip(record, pos)
    tok = store._token()
    backend.set_row("pub", bad, sealing.record_tag(sealing.tag_key(tok["pub_key"]), tok["serial"], "pub", bad))
    got = load(backend.open())["pub"]
    assert rv(store.unseal, "pub", C.CKA_VALUE, got[C.CKA_VALUE]) == C.CKR_DEVICE_ERROR


def test_flipped_plain_attribute_not_served(store, backend, caplog):
    store.save_object("pub", aes_key(label=b"LBL", private=False), AES_SECRET)
    other = backend.open()
    cursor, upserts, _ = feed(other, None)
    assert [u for u, _ in upserts] == ["pub"]
    record, tag = backend.row("pub")
    entry = records._ENTRY.size
    sign_at = record.index(records._ENTRY.pack(C.CKA_SIGN, records.PLAIN, 1)) + entry
    for bad in (_flip(record, record.index(b"LBL")), record[:sign_at] + b"\x01" + record[sign_at + 1:]):
        backend.set_row("pub", bad, tag)
        with caplog.at_level(logging.WARNING, logger="ferrohsm"):
            cursor, upserts, deleted = feed(other, cursor)
        assert upserts == [] and deleted == ["pub"]           # dropped, never served
        assert "pub" not in load(backend.open())
    assert "not served" in caplog.text


def test_swapped_records_detected(store, backend):
    store.save_object("a", aes_key(b"a", private=False), AES_SECRET)
    store.save_object("b", aes_key(b"b", private=False, value=b"other secret"), AES_SECRET)
    ra, rb = backend.row("a"), backend.row("b")
    backend.set_row("a", *rb)
    backend.set_row("b", *ra)
    assert load(backend.open()) == {}
    # only the sealed blob swapped in, tag forged: the value's AAD catches it
    store.save_object("a2", aes_key(b"a", private=False), AES_SECRET)
    store.save_object("b2", aes_key(b"b", private=False, value=b"other secret"), AES_SECRET)
    blob_b = load(store)["b2"][C.CKA_VALUE].blob
    assert rv(store.unseal, "a2", C.CKA_VALUE, Sealed(blob_b)) == C.CKR_DEVICE_ERROR


def test_reinitialized_elsewhere_drops_master_key(store, backend):
    store.login(C.CKU_USER, USER)
    other = backend.open()
    other.initialize(LABEL, SO)
    feed(store, None)
    assert rv(store.save_object, "p", aes_key(), AES_SECRET) == C.CKR_USER_NOT_LOGGED_IN


def test_threads_share_one_store(store):
    import threading
    store.login(C.CKU_USER, USER)

    def work(n):
        for i in range(25):
            store.save_object(f"t{n}-{i}", aes_key(b"t"), AES_SECRET)
            feed(store, None)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    objs = load(store)
    assert len(objs) == 100
    assert all(store.unseal(u, C.CKA_VALUE, a[C.CKA_VALUE]) == SECRET for u, a in objs.items())


# --- versions, compare-and-set, transactions ----------------------------------------
def versions(store, cursor=None):
    return {uid: version for uid, version, _ in store.changes(cursor).upserts}


def test_versions_and_stale_writes(store, backend):
    """Each write names the version it read; a stale one is a Conflict and writes nothing."""
    other = backend.open()
    assert store.save_object("k", aes_key(b"v1", private=False), AES_SECRET) == 1
    assert rv_conflict(other.save_object, "k", aes_key(b"dup", private=False), AES_SECRET, 0)
    assert other.save_object("k", aes_key(b"v2", private=False), AES_SECRET, 1) == 2
    head = store.head()
    assert rv_conflict(store.save_object, "k", aes_key(b"lost", private=False), AES_SECRET, 1)
    assert rv_conflict(store.delete_object, "k", 1)
    assert store.head() == head                              # nothing was written
    assert versions(store) == {"k": 2} and load(store)["k"][C.CKA_LABEL] == b"v2"


@pytest.mark.parametrize("stale", [0, 1, 2])
def test_destroyed_object_never_comes_back(store, backend, stale):
    other = backend.open()
    store.save_object("k", aes_key(private=False), AES_SECRET)
    store.save_object("k", aes_key(b"again", private=False), AES_SECRET, 1)
    other.delete_object("k", 2)
    assert rv_conflict(store.save_object, "k", aes_key(b"zombie", private=False), AES_SECRET, stale)
    assert rv_conflict(store.check_object, "k", 2)
    assert load(backend.open()) == {}


def test_transaction_commits_together_or_not_at_all(store, backend):
    other = backend.open()
    cursor = other.changes(None).cursor
    with pytest.raises(Conflict):
        with store.transaction():
            store.save_object("pub", aes_key(b"pub", private=False), AES_SECRET)
            with store.transaction():                      # nested: joins the outer one
                store.save_object("priv", aes_key(b"priv", private=False), AES_SECRET)
            store.check_object("gone", 1)                  # the source of a copy vanished
    assert feed(other, cursor) == (cursor, [], []) and load(backend.open()) == {}
    with store.transaction():
        store.save_object("pub", aes_key(b"pub", private=False), AES_SECRET)
        store.save_object("priv", aes_key(b"priv", private=False), AES_SECRET)
    got = other.changes(cursor)
    assert sorted(u for u, _, _ in got.upserts) == ["priv", "pub"] and got.cursor == cursor + 2


def test_pruned_tombstones_make_old_readers_resync(store, backend, monkeypatch):
    monkeypatch.setattr(sealing, "TOMBSTONE_WINDOW", 20)     # the rule, not the default's size
    old_reader = backend.open()
    store.save_object("keep", aes_key(b"keep", private=False), AES_SECRET)
    store.save_object("drop", aes_key(b"drop", private=False), AES_SECRET)
    cursor = old_reader.changes(None).cursor
    store.delete_object("drop", 1)
    for i in range(sealing.TOMBSTONE_WINDOW + 2):        # churn past the window
        store.save_object(f"t{i}", aes_key(b"t", private=False), frozenset())
        store.delete_object(f"t{i}", 1)
    assert store._token()["pruned"] > cursor
    got = old_reader.changes(cursor)
    assert got.full and [u for u, _, _ in got.upserts] == ["keep"]
    fresh = backend.open().changes(cursor + 1)
    assert fresh.full
    assert rv_conflict(store.save_object, "drop", aes_key(private=False), AES_SECRET, 1)


def test_iv_counters_per_lineage(store, backend):
    other = backend.open()
    store.save_object("k", aes_key(private=False), AES_SECRET)
    store.save_object("copy", aes_key(private=False), AES_SECRET, lineage="k")
    got = [store.reserve_counter("k", 10), other.reserve_counter("copy", 10), store.reserve_counter("k", 5)]
    assert got == [0, 10, 20]                         # one counter for a key and its copies
    assert other.reserve_counter("session-obj", 7, lineage="k") == 25
    assert other.reserve_counter("new-session-obj", 7, lineage="new-session-obj") == 0
    store.delete_object("k", 1)
    assert rv_conflict(store.reserve_counter, "k", 10)        # a destroyed key gets none
    assert backend.open().reserve_counter("copy", 1) == 32    # durable, seen by every store object


def test_legacy_counter_continues(store, backend):
    """A key from before schema 2 continues the counter the upgrade imported."""
    store.save_object("k", aes_key(private=False), AES_SECRET)
    with store.transaction():
        store._set_counter(sealing.LEGACY_PREFIX + "abc", 70000)
    assert store.reserve_counter("k", 10, legacy="abc") == 70000
    assert backend.open().reserve_counter("k", 10, legacy="abc") == 70010
    assert store.reserve_counter("k", 10, legacy="other") == 0     # no legacy entry: its own


def rv_conflict(fn, *args) -> bool:
    try:
        fn(*args)
    except Conflict:
        return True
    return False
