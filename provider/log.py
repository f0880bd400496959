"""The engine's logger. Errors are logged once, where they become a CK_RV;
key material and PINs are never logged."""

import logging
import sys

LOG = logging.getLogger("ferrohsm")
_handler: logging.Handler | None = None


def configure(level: str, file: str = "") -> None:
    global _handler
    if _handler is not None:
        LOG.removeHandler(_handler)
        _handler.close()
    if file:
        from .files import touch_private
        touch_private(file)             # 0600 (and its directory 0700) before logging opens it
    _handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("ferrohsm[%(process)d] %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(level)
    LOG.propagate = False
