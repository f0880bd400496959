"""Fixtures for every test directory: the PostgreSQL peer (tests/peers/fixtures.py), one
server per session (and one per test for tests that stop it) whichever of tests/unit (the store contract, the engine) and tests/e2e
(the built module) use it."""

from tests.peers.fixtures import postgres, postgres_private  # noqa: F401
