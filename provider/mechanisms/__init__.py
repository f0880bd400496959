"""Mechanism families. Each module registers its mechanisms in `registry`;
`families` imports them all (done lazily by the registry on first use)."""
