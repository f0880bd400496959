"""The shim's side of the native fast path (native/, issue 4): AES-GCM, and ECDSA signing.

After the engine accepted an encrypt, decrypt, message or sign init, `hand_over` asks
it for the operation (Library.offload_grant) and arms native state with it; the
engine then forgets the operation (Library.release). From then on the session's
operation of that kind lives in native code only, and the C entry points answer
without Python. A `Binding` is what the engine calls to drop native state
(key destroyed or changed, session closed, logout, PIN locked, C_Finalize).
All of this runs under the lock of the session's token (Library._lock_of), so arming and
dropping are ordered.
What is armed holds a lease (native/ferro_native.h FERRO_LEASE_NS): when it
runs out, a repeat init comes back here, and an armed operation asks the
engine to recheck its key first (`ferro_py_recheck` -> Library.recheck).
Each loaded copy of the .so has its own native tables: a copy's `Binding` is
what its libraries' `offload` is, and every call here goes through it.

FERROHSM_NATIVE=0 in the environment keeps every operation in Python (the tests
use it to compare the two paths byte for byte).
"""

import os

from .handlers_common import onerror, wrap

# operation kind -> the native table's index (native/ferro_native.h)
KINDS = {"encrypt": 0, "decrypt": 1, "message_encrypt": 2, "message_decrypt": 3, "sign": 4}


class Binding:
    """One loaded copy's native side (its own native/slots.c tables), and the
    provider.session.Offload its libraries drop native state through."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.enabled = os.environ.get("FERROHSM_NATIVE", "1") != "0"

    def drop_session(self, handle: int) -> None:
        self.lib.ferro_native_drop_session(handle)

    def drop_key(self, handle: int, rv: int) -> None:
        self.lib.ferro_native_drop_key(handle, rv)

    def drop_all(self) -> None:
        self.lib.ferro_native_drop_all()


def bind(ffi, lib, state) -> Binding:
    """The native side of the copy whose ffi/lib these are; `state` is its State."""
    binding = Binding(ffi, lib)
    lib.ferro_native_enabled = int(binding.enabled)

    def reserve_iv(library, session, key, p_start, p_count, p_salt):
        p_start[0], p_count[0], p_salt[0] = library.reserve_iv(session, key)

    def recheck(library, session, key):
        library.recheck(session, key)

    # through the handlers' wrapper: this copy's NOT_INITIALIZED, PKCS11Error -> its rv
    for name, fn in (("ferro_py_reserve_iv", reserve_iv), ("ferro_py_recheck", recheck)):
        ffi.def_extern(name=name, onerror=onerror)(wrap(name, fn, True, state))
    return binding


def attach(library, binding: Binding) -> None:
    """A new Library (C_Initialize) of the copy `binding` belongs to: let it drop native state."""
    if binding.enabled:
        library.offload = binding


def _native(library, kind: str):
    """The library's copy's Binding if `kind` may run natively there, else None."""
    binding = library.offload
    return binding if isinstance(binding, Binding) and kind in KINDS else None


def forget(library, session: int, kind: str) -> None:
    """The engine runs an init of `kind` itself: the cached native authorisation
    for it goes (so a later native init cannot pass over the engine's operation).
    The engine's init checks the store's head (as every key use does), so what it
    then arms here, with a fresh lease, includes other processes' changes: a
    native repeat init whose lease ran out comes this way."""
    if binding := _native(library, kind):
        binding.lib.ferro_native_forget(session, KINDS[kind])


def hand_over(library, session: int, kind: str) -> None:
    """Move the operation the engine just started to native code, if it may go."""
    binding = _native(library, kind)
    if binding is None:
        return
    grant = library.offload_grant(session, kind)
    if grant is None:
        return
    ffi, lib = binding.ffi, binding.lib
    lib.ferro_max_data_len = library.config.limits.max_data_len   # the engine's cap, natively too
    if kind == "sign":
        key, value, params = grant
        armed = lib.ferro_native_arm_sign(session, key, ffi.from_buffer(value), len(value),
                                          ffi.from_buffer(params), len(params))
    else:
        key, value, iv, aad, tag_len = grant
        armed = lib.ferro_native_arm(session, KINDS[kind], key, ffi.from_buffer(value), len(value),
                                     ffi.from_buffer(iv) if iv else ffi.NULL, len(iv),
                                     ffi.from_buffer(aad) if aad else ffi.NULL, len(aad), tag_len)
    if armed == 0:
        library.release(session, kind)


def cancel(library, session: int, kind: str) -> None:
    if binding := _native(library, kind):
        binding.lib.ferro_native_cancel(session, KINDS[kind])
