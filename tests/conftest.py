"""Fixtures for every test directory: the real peers (tests/peers/fixtures.py), each
registered here once so one session has one of each whichever directories use it (a
peer fixture imported in two places is two fixtures: two pcscd's, while libpcsclite and
SoftHSM2 bind a process to the first one they saw): PostgreSQL (one server per session,
and one per test for tests that stop it), SoftHSM2, swtpm and pcscd + card, for
tests/unit, tests/e2e, tests/backends and tests/security."""

from tests.peers.fixtures import (ferro_remote, pcsc, postgres, postgres_private, softhsm,  # noqa: F401
                                  swtpm)
