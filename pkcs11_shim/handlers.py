"""The Python side of libferrohsm-pkcs11.so, loaded by the embedding init code.

`install(ffi, lib)` runs once per loaded copy of the .so, with that copy's ffi
and lib: it makes the copy's State (handlers_common) and native binding,
imports the handler modules once (each registers its functions), attaches one
@ffi.def_extern callback per Python-implemented function of functions.FUNCTIONS
to this copy, wrapped around this copy's State - a function nobody registered
answers CKR_FUNCTION_NOT_SUPPORTED - and then tells the copy's C side it is
ready (until then every call returns CKR_GENERAL_ERROR).

marshal keeps the first copy's ffi for casts and copies: every copy is the
same build, and none is ever unmapped (build.py), so any copy's ffi serves.
"""

from . import marshal, native
from .functions import python_functions
from .handlers_common import COPIES, REGISTRY, State, not_supported, onerror, wrap


def install(ffi, lib) -> None:
    if marshal.F.ffi is None:
        marshal.bind(ffi)
    state = State()
    state.native = native.bind(ffi, lib, state)
    from . import (handlers_crypto, handlers_events, handlers_general, handlers_keys,  # noqa: F401  (they register)
                   handlers_message, handlers_objects, handlers_sessions)
    for name in python_functions():
        if name in REGISTRY:
            fn, needs_library = REGISTRY[name]
            entry = wrap(name, fn, needs_library, state)
        else:
            entry = not_supported
        ffi.def_extern(name="py_" + name, onerror=onerror)(entry)
    COPIES.append(state)
    lib.ferro_python_ready = 1
