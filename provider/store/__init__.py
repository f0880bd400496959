"""Token stores: SQLite (the default, one file per token) and memory (tests).
Both share sealing.SealingStore, so each rule is written once."""

from .base import Sealed, TokenStore
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["Sealed", "TokenStore", "MemoryStore", "SqliteStore"]
