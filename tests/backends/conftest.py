from tests.peers.fixtures import pcsc, swtpm  # noqa: F401  (session-scoped peer fixtures)
