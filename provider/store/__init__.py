"""Token stores, all keeping one contract (base.TokenStore, base.Catalog):
memory, SQLite (the default, one file per token), filesystem (one directory per
token, one file per object version) and PostgreSQL (one database, every token).
The configuration's [store] table picks one (provider/config.py)."""

from .base import Catalog, Changes, Conflict, Sealed, TokenStore
from .memory import MemoryCatalog, MemoryStore
from .sqlite import SqliteCatalog, SqliteStore

__all__ = ["Catalog", "Changes", "Conflict", "Sealed", "TokenStore", "MemoryCatalog", "MemoryStore",
           "SqliteCatalog", "SqliteStore", "open_catalog"]


def open_catalog(config) -> Catalog:
    """The catalog of the store `config.store_kind` names."""
    args = dict(max_pin_failures=config.pin_max_failures, pin_policy=config.pin_policy)
    kind = config.store_kind
    if kind == "sqlite":
        return SqliteCatalog(config.token_dir, **args)
    if kind == "memory":
        return MemoryCatalog(**args)
    if kind == "filesystem":
        from .filesystem import FilesystemCatalog
        return FilesystemCatalog(config.token_dir, **args)
    if kind == "postgres":
        from .postgres import PostgresCatalog      # psycopg is imported only when used
        return PostgresCatalog(config.store_dsn, head_ttl=config.store_head_cache, **args)
    raise ValueError(kind)      # Config.parse admits only STORE_KINDS
