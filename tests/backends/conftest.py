from tests.peers.fixtures import pcsc, softhsm, swtpm  # noqa: F401  (session-scoped peer fixtures)
