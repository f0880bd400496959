"""The built module on `[store] kind = "postgres"` (a fresh database of the PostgreSQL
peer per test), driven by pkcs11-tool processes: each process connects, finds the
tokens in the database, and sees what the others wrote."""

import pytest

from .conftest import SO_PIN, USER_PIN


def out(proc) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def pg_hsm(hsm, postgres):
    dsn = postgres.database()
    with open(hsm.conf, "a") as conf:
        conf.write(f'[store]\nkind = "postgres"\ndsn = "{dsn}"\n')
    hsm.dsn = dsn
    hsm.init_token()
    return hsm


def test_token_and_objects_live_in_the_database(pg_hsm):
    import psycopg
    slots = out(pg_hsm.tool("--list-slots"))
    assert "token label        : e2e" in slots and "uninitialized" in slots
    pg_hsm.user("--keygen", "--key-type", "AES:32", "--label", "pg-aes", "--id", "01")
    listed = out(pg_hsm.user("--list-objects", "--type", "secrkey"))     # another process
    assert "pg-aes" in listed
    with psycopg.connect(pg_hsm.dsn) as db:
        (count,) = db.execute("SELECT count(*) FROM ferro_objects").fetchone()
        assert count == 1
        (record,) = db.execute("SELECT record FROM ferro_objects").fetchone()
        assert SO_PIN.encode() not in record and USER_PIN.encode() not in record
    pg_hsm.user("--delete-object", "--type", "secrkey", "--label", "pg-aes")
    assert "pg-aes" not in out(pg_hsm.user("--list-objects", "--type", "secrkey"))
    with psycopg.connect(pg_hsm.dsn) as db:
        assert db.execute("SELECT count(*) FROM ferro_objects").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM ferro_tombstones").fetchone() == (1,)


def test_tool_self_test_and_fork(pg_hsm):
    report = out(pg_hsm.user("--test"))
    assert "No errors" in report, report
    assert pg_hsm.tool("--test-fork").returncode == 0
