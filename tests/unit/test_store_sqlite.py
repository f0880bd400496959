"""What only the SQLite store has: a file, its modes, other processes, fork, kill -9."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

from provider import constants as C
from provider.store.sealing import SCHEMA_VERSION
from provider.store.sqlite import SqliteStore

from .stores import FAST
from .test_store import AES_SECRET, LABEL, MAX, SECRET, SO, USER, aes_key, feed, legacy_wrap, load, rv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def open_store(path):
    return SqliteStore(str(path), max_pin_failures=MAX, pin_policy=FAST)


def new_token(path):
    s = open_store(path)
    s.initialize(LABEL, SO)
    s.login(C.CKU_SO, SO)
    s.init_pin(USER)
    s.logout()
    return s


def run_child(path, body, check=True):
    """Run `body` in a fresh Python process with `store` open on `path`."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from provider import constants as C
        from provider.store import sealing
        from provider.store.sqlite import SqliteStore
        from provider.store.sealing import Argon2id, PinPolicy
        store = SqliteStore({str(path)!r}, max_pin_failures={MAX}, pin_policy={FAST!r})
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=check, timeout=60)


def test_file_absent_until_initialize(tmp_path):
    path = tmp_path / "tokens" / "token-x.sqlite"
    s = open_store(path)
    assert not s.initialized() and not path.exists() and not path.parent.exists()
    s.close()
    assert not path.exists()
    s = open_store(path)
    s.initialize(LABEL, SO)
    assert path.exists() and s.initialized()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in ("-wal", "-shm"):
        if os.path.exists(str(path) + extra):
            assert stat.S_IMODE(os.stat(str(path) + extra).st_mode) == 0o600
    s.close()


def test_empty_file_is_not_a_token(tmp_path):
    path = tmp_path / "token-empty.sqlite"
    path.write_bytes(b"")
    assert not open_store(path).initialized()
    path.write_bytes(b"garbage, not a database" * 100)
    assert not open_store(path).initialized()


def test_secrets_never_in_the_file(tmp_path):
    path = tmp_path / "token.sqlite"
    s = new_token(path)
    s.login(C.CKU_USER, USER)
    master = s._master
    s.save_object("priv", aes_key(), AES_SECRET)
    s.save_object("pub", aes_key(private=False, value=SECRET[::-1]), AES_SECRET)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("token.sqlite")]
    blob = b"".join(p.read_bytes() for p in files)
    assert b"store test" in blob                          # the label is there in clear ...
    for secret in (SECRET, SECRET[::-1], master, USER, SO):
        assert secret not in blob                         # ... key material and PINs are not
    s.close()


def test_lock_survives_reopen(tmp_path):
    path = tmp_path / "token.sqlite"
    new_token(path).close()
    for _ in range(MAX):
        s = open_store(path)
        assert rv(s.login, C.CKU_USER, b"wrong") == C.CKR_PIN_INCORRECT
        s.close()
    s = open_store(path)
    assert s.pin_flags() & C.CKF_USER_PIN_LOCKED
    assert rv(s.login, C.CKU_USER, USER) == C.CKR_PIN_LOCKED


def test_try_counted_when_killed_mid_check(tmp_path):
    path = tmp_path / "token.sqlite"
    new_token(path).close()
    # the child dies by SIGKILL inside the PIN check, after the counter was committed
    proc = run_child(path, """
        def die(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        sealing.unwrap_master = die
        store.login(C.CKU_USER, b"whatever")
    """, check=False)
    assert proc.returncode == -signal.SIGKILL
    s = open_store(path)
    assert s.pin_flags() == C.CKF_USER_PIN_COUNT_LOW
    s.login(C.CKU_USER, USER)
    assert s.pin_flags() == 0


def test_other_process_sees_and_makes_changes(tmp_path):
    path = tmp_path / "token.sqlite"
    s = new_token(path)
    s.login(C.CKU_USER, USER)
    cursor, _, _ = feed(s, None)
    s.save_object("from-parent", aes_key(), AES_SECRET)
    cursor, _, _ = feed(s, cursor)
    run_child(path, f"""
        store.login(C.CKU_USER, {USER!r})
        attrs = {{C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_PRIVATE: True, C.CKA_VALUE: b"child secret"}}
        store.save_object("from-child", attrs, frozenset({{C.CKA_VALUE}}))
        upserts = store.changes(None).upserts
        assert sorted(u for u, _, _ in upserts) == ["from-child", "from-parent"], upserts
        store.delete_object("from-parent", 1)
    """)
    cursor, upserts, deleted = feed(s, cursor)
    assert [u for u, _ in upserts] == ["from-child"] and deleted == ["from-parent"]
    (_, attrs), = upserts
    assert s.unseal("from-child", C.CKA_VALUE, attrs[C.CKA_VALUE]) == b"child secret"


def test_fork_reopens_connection(tmp_path):
    path = tmp_path / "token.sqlite"
    s = new_token(path)
    cursor, _, _ = feed(s, None)
    pid = os.fork()
    if pid == 0:  # child: use the inherited store object, then leave without cleanup
        code = 1
        try:
            s.save_object("forked", {C.CKA_CLASS: C.CKO_DATA, C.CKA_LABEL: b"f"}, frozenset())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cursor, upserts, _ = feed(s, cursor)
    assert [u for u, _ in upserts] == ["forked"]
    s.save_object("parent", {C.CKA_CLASS: C.CKO_DATA}, frozenset())   # parent's connection still fine
    assert set(load(open_store(path))) == {"forked", "parent"}


def test_concurrent_writers_take_turns(tmp_path):
    """Two processes and this one write at once; busy waits, nothing is lost."""
    path = tmp_path / "token.sqlite"
    s = new_token(path)
    def child(tag):
        return textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {ROOT!r})
            from provider import constants as C
            from provider.store.sqlite import SqliteStore
            from provider.store.sealing import Argon2id, PinPolicy
            store = SqliteStore({str(path)!r}, pin_policy={FAST!r})
            for i in range(40):
                store.save_object(f"{tag}-{{i}}", {{C.CKA_CLASS: C.CKO_DATA}}, frozenset())
                if i % 10 == 0:
                    store.changes(None)
        """)
    procs = [subprocess.Popen([sys.executable, "-c", child(tag)]) for tag in ("p1", "p2")]
    for i in range(40):
        s.save_object(f"me-{i}", {C.CKA_CLASS: C.CKO_DATA}, frozenset())
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert len(load(open_store(path))) == 120


def test_schema_2_file_is_upgraded_and_its_pbkdf2_wraps_replaced_at_login(tmp_path):
    """A token file of schema 2 (the previous release: PBKDF2 wraps, no KDF or tries
    columns) gains the columns when opened; each PIN's login wraps it again with Argon2id."""
    import sqlite3
    path = tmp_path / "token.sqlite"
    s = new_token(path)
    legacy_wrap(s, "user", USER)
    legacy_wrap(s, "so", SO)                 # (after: legacy_wrap logs the SO in)
    s.close()
    with sqlite3.connect(path) as db:
        for column in ("so_kdf", "so_tries", "user_kdf", "user_tries", "manifest", "anchor"):
            db.execute(f"ALTER TABLE token DROP COLUMN {column}")
        for table in ("audit_records", "audit_checkpoints"):      # (schema 5's)
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 2")
    old = open_store(path)
    old.login(C.CKU_USER, USER)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT user_kdf, user_iters, so_kdf, so_iters FROM token").fetchone() == (
            FAST.kdf.text(), None, None, 1000)
    open_store(path).login(C.CKU_SO, SO)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT so_kdf FROM token").fetchone() == (FAST.kdf.text(),)
