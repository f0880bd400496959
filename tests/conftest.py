"""Fixtures for every test directory: the PostgreSQL peer (tests/peers/fixtures.py), one
server per session whichever of tests/unit (the store contract, the engine) and tests/e2e
(the built module) use it."""

from tests.peers.fixtures import postgres  # noqa: F401
