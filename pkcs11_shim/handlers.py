"""The Python side of libferrohsm-pkcs11.so, loaded by the embedding init code.

`install(ffi, lib)` binds the marshalling helpers to the library's ffi, imports
the handler modules (each registers its functions), attaches one
@ffi.def_extern callback per Python-implemented function of functions.FUNCTIONS
- a function nobody registered answers CKR_FUNCTION_NOT_SUPPORTED - and then
tells the C side it is ready (until then every call returns CKR_GENERAL_ERROR).
"""

from . import marshal, native
from .functions import python_functions
from .handlers_common import REGISTRY, not_supported, onerror, wrap


def install(ffi, lib) -> None:
    marshal.bind(ffi)
    native.bind(ffi, lib)
    from . import (handlers_crypto, handlers_general, handlers_keys,  # noqa: F401  (they register)
                   handlers_message, handlers_objects, handlers_sessions)
    for name in python_functions():
        if name in REGISTRY:
            fn, needs_library = REGISTRY[name]
            entry = wrap(name, fn, needs_library)
        else:
            entry = not_supported
        ffi.def_extern(name="py_" + name, onerror=onerror)(entry)
    lib.ferro_python_ready = 1
