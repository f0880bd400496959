"""A token directory written by the first release (tests/data/store/v1, store schema 1)
opens under this one, upgrades in place once, and keeps its objects, PINs and IV
counters; a file from a newer release is not served."""

import logging
import shutil
import sqlite3
from pathlib import Path

from provider import constants as C
from provider.config import Config
from provider.library import Library
from provider.mechanisms.params import GcmMessageParams, Mechanism
from provider.store import sealing

from .conftest import RW
from .tmpl import T

V1 = Path(__file__).resolve().parents[1] / "data" / "store" / "v1"
USER_PIN = b"user-pin-v1"


def library(tokens: Path, level: str = "ERROR") -> Library:
    conf = tokens.parent / "ferrohsm.conf"
    conf.write_text(f'[tokens]\ndirectory = "{tokens}"\n[log]\nlevel = "{level}"\n')
    return Library(Config.parse(conf.read_text(), str(conf)))


def v1_copy(tmp_path) -> Path:
    tokens = tmp_path / "tokens"
    tokens.mkdir(mode=0o700)
    shutil.copy(V1 / "token-v1.sqlite", tokens / "token-00000000000000000001-v1.sqlite")
    shutil.copy(V1 / "gcm-iv-counters.json", tokens)
    return tokens


def user_session(lib):
    (slot,) = lib.get_slot_list(True)[:-1]          # the v1 token, then the free slot
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    return s


def labels(lib, s) -> dict:
    lib.find_objects_init(s, [])
    found = lib.find_objects(s, 100)
    lib.find_objects_final(s)
    return {bytes(lib.get_attribute_value(s, h, [C.CKA_LABEL])[0]): h for h in found}


def first_counter(lib, s, key) -> int:
    lib.message_encrypt_init(s, Mechanism(C.CKM_AES_GCM), key)
    iv = lib.encrypt_message(s, GcmMessageParams(b"FIXD" + bytes(8), 32, C.CKG_GENERATE_COUNTER, 128),
                             b"", b"x", 1)[0]
    lib.message_encrypt_final(s)
    return int.from_bytes(iv[4:], "big") & 0xFFFFFFFF     # the counter (the high half is the block's salt)


def schema_of(tokens: Path) -> int:
    (path,) = tokens.glob("token-*.sqlite")
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_v1_token_opens_upgrades_and_keeps_everything(tmp_path):
    tokens = v1_copy(tmp_path)
    assert schema_of(tokens) == 0                 # the first release wrote no schema number
    lib = library(tokens)
    s = user_session(lib)
    assert schema_of(tokens) == sealing.SCHEMA_VERSION
    (path,) = tokens.glob("token-*.sqlite")           # the first login sealed private records whole
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT record, private FROM objects").fetchall()
        assert {bool(p) for _, p in rows} == {True, False}
        assert all(r[:1] == bytes([sealing.ENVELOPE]) for r, p in rows if p)
        assert db.execute("SELECT manifest FROM token").fetchone()[0] is not None
    assert b"v1-aes" not in path.read_bytes() + Path(f"{path}-wal").read_bytes()   # a private label
    found = labels(lib, s)
    assert set(found) == {b"v1-aes", b"v1-ec", b"v1-data"}      # v1-gone stays destroyed
    assert lib.get_attribute_value(s, found[b"v1-data"], [C.CKA_VALUE]) == [b"hello v1"]
    # the v1 AES key used 0..65535 for counter IVs (gcm-iv-counters.json); the store continues
    assert first_counter(lib, s, found[b"v1-aes"]) == 65536
    # a change is a compare-and-set on the upgraded rows (version 1 at the upgrade)
    lib.set_attribute_value(s, found[b"v1-data"], T(LABEL=b"v2-data"))
    lib.finalize()

    # the side file no longer matters: deleting it, or restoring the old one, repeats nothing
    (tokens / "gcm-iv-counters.json").unlink()
    lib = library(tokens)
    s = user_session(lib)
    assert first_counter(lib, s, labels(lib, s)[b"v1-aes"]) == 2 * 65536
    lib.finalize()
    shutil.copy(V1 / "gcm-iv-counters.json", tokens)
    lib = library(tokens)
    s = user_session(lib)
    found = labels(lib, s)
    assert first_counter(lib, s, found[b"v1-aes"]) == 3 * 65536
    assert b"v2-data" in found
    lib.finalize()


def test_file_from_a_newer_release_is_not_served(tmp_path, caplog):
    tokens = v1_copy(tmp_path)
    (path,) = tokens.glob("token-*.sqlite")
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {sealing.SCHEMA_VERSION + 1}")
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        lib = library(tokens, "WARNING")
    assert len(lib.get_slot_list(False)) == 1             # only the free slot
    assert "newer than this release" in caplog.text
    lib.finalize()
    with sqlite3.connect(path) as db:                      # and the file was left as it was
        assert db.execute("PRAGMA user_version").fetchone()[0] == sealing.SCHEMA_VERSION + 1
