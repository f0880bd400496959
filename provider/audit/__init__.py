"""The tamper-evident audit of every key use and administrative action: records
(record.py) chained and MACed into the token's store, group-committed and failing
closed (log.py), signed checkpoints with RFC 6962 Merkle roots (checkpoint.py,
merkle.py), and the offline verifier (verifier.py). `open_audit` builds a token's log
from the configuration's [audit] table."""

import os

from .. import files
from ..backends.factory import _pin_source
from .checkpoint import Checkpoint, Signer, token_signer
from .log import Audit, AuditUnavailable, Checkpointer, Receipt
from .record import Event
from .verifier import Report, verify

__all__ = ["Audit", "AuditUnavailable", "Checkpoint", "Checkpointer", "Event", "Receipt", "Report", "Signer",
           "hmac_key", "open_audit", "token_signer", "verify"]

DEFAULT_KEY_FILE = "audit-hmac.key"


def hmac_key(config) -> bytes:
    """The records' HMAC key: `[audit] hmac_key = "env:NAME" | "file:PATH"`; by default
    the file audit-hmac.key in the tokens directory, 32 random bytes (hex) made 0600 at
    first need. A file others can read is refused."""
    spec = config.audit.hmac_key
    if not spec:
        path = config.token_dir / DEFAULT_KEY_FILE
        if not path.exists():
            files.private_dir(config.token_dir)
            fd = files.private_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                os.write(fd, os.urandom(32).hex().encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        spec = f"file:{path}"
    return _pin_source(spec)


def open_audit(config, store, token=None, writer=None) -> Audit:
    """The audit log of `store` as [audit] configures it; checkpoints are signed by
    `token`'s checkpoint key (made at first need, the user logged in). `writer`: a second
    store object of the same token that record() commits through (Audit says why)."""
    settings = config.audit
    signer = None
    if token is not None:
        def signer():
            with token.lock:
                return token_signer(token)
    return Audit(store, hmac_key(config), signer, file=settings.file or None,
                 checkpoint_file=settings.checkpoint_file or None,
                 checkpoint_every=settings.checkpoint_every, checkpoint_seconds=settings.checkpoint_seconds,
                 writer=writer)
