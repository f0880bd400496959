"""What every handler shares: the registry of Python-implemented functions, the
one wrapper that turns results and exceptions into a CK_RV, and each loaded
copy's initialization state.

A Python host may load the .so more than once (the same file from two
directories): each copy runs the init code with its own ffi and lib, but these
Python modules are shared. So nothing here is per process: `install` makes one
`State` per copy and wraps that copy's entry points around it.

The wrapper:
  - refuses every function but C_Initialize/C_Finalize with
    CKR_CRYPTOKI_NOT_INITIALIZED until C_Initialize succeeded on this copy in
    this process (after fork() the child starts uninitialized, as SoftHSM2 and
    p11-kit expect);
  - calls handlers registered with needs_library=False as fn(state, *c_args);
  - returns CKR_OK for a handler that returns None, else the int it returns;
  - turns PKCS11Error into its rv (logged at DEBUG), and any other exception
    into CKR_GENERAL_ERROR with one ERROR log record. Nothing escapes to C.
"""

import logging
import os
import threading

from provider import constants as C
from provider.errors import PKCS11Error
from provider.log import LOG

# name -> (handler, needs an initialized library)
REGISTRY: dict[str, tuple] = {}


def handler(name: str, needs_library: bool = True):
    """Register `fn` as the Python side of C function `name`. With needs_library
    it is called as fn(library, *c_args), else fn(*c_args)."""
    def deco(fn):
        REGISTRY[name] = (fn, needs_library)
        return fn
    return deco


class State:
    """One loaded copy of the library."""

    def __init__(self):
        self.lock = threading.Lock()
        self.library = None        # provider.library.Library while initialized
        self.pid = None            # the process that initialized it
        self.inherited = []        # libraries a forked child must neither use nor close
        self.native = None         # native.Binding: this copy's C side

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's library without closing its store
        connections (they belong to the parent), keep it referenced so they are
        never finalized here."""
        if self.library is not None and self.pid != os.getpid():
            self.inherited.append(self.library)
            self.library = self.pid = None


# every copy loaded in this process (copies stay mapped until exit: build.py)
COPIES: list[State] = []


def _after_fork_in_child() -> None:
    for state in COPIES:
        state.lock = threading.Lock()     # another thread may have held it at fork()
        state.forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


def wrap(name: str, fn, needs_library: bool, state: State):
    ok, general = C.CKR_OK, C.CKR_GENERAL_ERROR
    not_initialized = C.CKR_CRYPTOKI_NOT_INITIALIZED
    getpid = os.getpid

    def entry(*args):
        try:
            if needs_library:
                library = state.library
                if library is None or state.pid != getpid():
                    return not_initialized
                rv = fn(library, *args)
            else:
                rv = fn(state, *args)
            return ok if rv is None else rv
        except PKCS11Error as err:
            if LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("%s: %s", name, err)
            return err.rv
        except Exception:
            LOG.exception("%s failed unexpectedly", name)
            return general

    entry.__name__ = "py_" + name
    return entry


def not_supported(*args):
    return C.CKR_FUNCTION_NOT_SUPPORTED


def onerror(exc_type, exc_value, tb):
    """Last line of defence (e.g. a return value cffi cannot convert)."""
    try:
        LOG.error("PKCS#11 callback failed: %s: %s", exc_type.__name__, exc_value)
    except Exception:
        pass
    return C.CKR_GENERAL_ERROR
