"""A process opening a token reads the store's index, not every record: records are
read when an object is first used, and one whose index entry lies is not served."""

import logging
import sqlite3

from provider import constants as C
from provider.errors import PKCS11Error
from provider.store.sqlite import SqliteStore

from .conftest import RW, USER_PIN, init_token, make_library
from .tmpl import T


def make_objects(tmp_path, n):
    lib = make_library(tmp_path)
    slot = init_token(lib)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    for i in range(n):
        lib.create_object(s, T(CLASS=C.CKO_DATA, TOKEN=True, PRIVATE=bool(i % 2), LABEL=b"obj-%d" % i,
                               VALUE=b"value %d" % i))
    lib.finalize()
    return slot


def find(lib, s, **template):
    lib.find_objects_init(s, T(**template))
    found = lib.find_objects(s, 1000)
    lib.find_objects_final(s)
    return found


def test_open_and_login_read_no_record(tmp_path, monkeypatch):
    slot = make_objects(tmp_path, 40)
    reads = []
    real = SqliteStore._get
    monkeypatch.setattr(SqliteStore, "_get", lambda self, uid: reads.append(uid) or real(self, uid))
    lib = make_library(tmp_path)
    s = lib.open_session(slot, RW)
    lib.login(s, C.CKU_USER, USER_PIN)
    assert reads == [] and len(lib.tokens[slot].by_uid) == 40
    (h,) = find(lib, s, LABEL=b"obj-7")                     # answered by the index entries
    assert reads == []
    assert lib.get_attribute_value(s, h, [C.CKA_VALUE]) == [b"value 7"]
    assert len(reads) == 1                                  # read when used, then held
    assert lib.get_attribute_value(s, h, [C.CKA_LABEL]) == [b"obj-7"] and len(reads) == 1
    assert len(find(lib, s, CLASS=C.CKO_DATA)) == 40 and len(reads) == 1
    assert len(find(lib, s, VALUE=b"value 3")) == 1 and len(reads) == 40   # needs the records
    lib.finalize()


def rv_of(fn, *args):
    try:
        return fn(*args)
    except PKCS11Error as err:
        return err.rv


def test_a_lying_index_entry_is_not_served(tmp_path, caplog):
    slot = make_objects(tmp_path, 3)
    (path,) = (tmp_path / "tokens").glob("token-*.sqlite")
    with sqlite3.connect(path) as db:                      # someone with the file edits the index only
        db.execute("UPDATE objects SET label = ?, private = 0 WHERE private = 1", (b"obj-0",))   # obj-1
    lib = make_library(tmp_path)
    s = lib.open_session(slot, RW)                          # not logged in: public objects only
    found = find(lib, s, LABEL=b"obj-0")                    # the index answers: two handles
    assert len(found) == 2
    with caplog.at_level(logging.WARNING, logger="ferrohsm"):
        got = [rv_of(lib.get_attribute_value, s, h, [C.CKA_VALUE]) for h in found]
    assert sorted(got, key=str) == sorted([[b"value 0"], C.CKR_OBJECT_HANDLE_INVALID], key=str)
    assert "not what the store's index says" in caplog.text   # the private obj-1 stays unread
    assert len(find(lib, s, LABEL=b"obj-0")) == 1             # and is gone from the index
    lib.finalize()


def test_an_object_known_by_its_index_entry_changed_elsewhere(tmp_path):
    """B knows K by its index entry only (never read) when A changes it: B's next look
    (a refresh, or the first read of K's record) takes A's version, without reading
    first the record it is replacing (that recursed: CKR_GENERAL_ERROR at C_Login)."""
    slot = make_objects(tmp_path, 2)
    a, b = make_library(tmp_path), make_library(tmp_path)
    sa, sb = a.open_session(slot, RW), b.open_session(slot, RW)
    (ka,) = find(a, sa, LABEL=b"obj-0")
    kb = b.tokens[slot].by_uid[a.tokens[slot].index.get(ka).uid]
    assert not kb.loaded
    a.set_attribute_value(sa, ka, T(LABEL=b"renamed"))
    b.login(sb, C.CKU_USER, USER_PIN)                      # refreshes: K's entry moved on
    assert b.get_attribute_value(sb, kb.handle, [C.CKA_LABEL, C.CKA_VALUE]) == [b"renamed", b"value 0"]
    assert find(b, sb, LABEL=b"renamed") == [kb.handle] and find(b, sb, LABEL=b"obj-0") == []
    a.finalize()
    b.finalize()


def test_a_record_newer_than_its_index_entry_is_taken_on_first_read(tmp_path):
    slot = make_objects(tmp_path, 2)
    a, b = make_library(tmp_path), make_library(tmp_path)
    sa, sb = a.open_session(slot, RW), b.open_session(slot, RW)
    (ka,) = find(a, sa, LABEL=b"obj-0")
    kb = b.tokens[slot].by_uid[a.tokens[slot].index.get(ka).uid]
    a.set_attribute_value(sa, ka, T(LABEL=b"renamed"))
    assert kb.attrs[C.CKA_LABEL] == b"renamed"                # the loader meets the newer version
    assert b.get_attribute_value(sb, kb.handle, [C.CKA_LABEL]) == [b"renamed"]
    a.finalize()
    b.finalize()
