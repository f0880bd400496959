"""General-purpose, slot and token functions: C_Initialize, C_Finalize,
C_GetInfo, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo, C_GetMechanismList,
C_GetMechanismInfo, C_InitToken.

C_Initialize's CK_C_INITIALIZE_ARGS, as the spec's four cases go: no mutex
callbacks (with or without CKF_OS_LOCKING_OK) or all four with
CKF_OS_LOCKING_OK -> we use OS locks; all four without CKF_OS_LOCKING_OK ->
CKR_CANT_LOCK (we cannot run on the application's mutexes); some but not all
-> CKR_ARGUMENTS_BAD; pReserved must be NULL. CKF_LIBRARY_CANT_CREATE_OS_THREADS
is fine: the engine creates no threads. Two threads racing get exactly one CKR_OK.
Both act on the State of the loaded copy they were called through (a second copy
of the .so in the process is a library of its own). A Python host that already
imported other versions of cryptography or cffi than the module was installed
with never gets here: the start-up refuses it in one line and C_Initialize
answers CKR_GENERAL_ERROR (build.py, BOOT_PY).
"""

import os

from provider import constants as C
from provider.config import Config
from provider.errors import PKCS11Error
from provider.library import Library
from provider.log import LOG

from . import native, precheck
from .handlers_common import handler
from .marshal import F, bad, data, fill, need, ulongs_out

LABEL_LEN = 32


@handler("C_Initialize", needs_library=False)
def initialize(state, p_args):
    if p_args != F.NULL:
        args = F.ffi.cast("CK_C_INITIALIZE_ARGS *", p_args)
        if args.pReserved != F.NULL:
            raise bad("pReserved must be NULL")
        given = sum(f != F.NULL for f in (args.CreateMutex, args.DestroyMutex, args.LockMutex, args.UnlockMutex))
        if given not in (0, 4):
            raise bad("mutex callbacks: all or none")
        if given == 4 and not args.flags & C.CKF_OS_LOCKING_OK:
            raise PKCS11Error(C.CKR_CANT_LOCK, "application mutexes without CKF_OS_LOCKING_OK")
    with state.lock:
        state.forget_inherited()
        if state.library is not None:
            raise PKCS11Error(C.CKR_CRYPTOKI_ALREADY_INITIALIZED)
        try:
            library = Library(Config.load())
        except PKCS11Error as err:
            LOG.error("C_Initialize: %s", err)
            raise
        native.attach(library, state.native)
        state.library, state.pid = library, os.getpid()


@handler("C_Finalize", needs_library=False)
def finalize(state, p_reserved):
    if p_reserved != F.NULL:
        raise bad("pReserved must be NULL")
    with state.lock:
        state.forget_inherited()
        library = state.library
        if library is None:
            raise PKCS11Error(C.CKR_CRYPTOKI_NOT_INITIALIZED)
        state.library = state.pid = None
    library.finalize()


@handler("C_GetInfo")
def get_info(library, p_info):
    need(p_info)
    fill("CK_INFO", p_info, library.get_info())


@handler("C_GetSlotList")
def get_slot_list(library, token_present, p_list, pul_count):
    need(pul_count)
    return ulongs_out(library.get_slot_list(bool(token_present)), p_list, pul_count)


@handler("C_GetSlotInfo")
def get_slot_info(library, slot, p_info):
    need(p_info)
    fill("CK_SLOT_INFO", p_info, library.get_slot_info(slot))


@handler("C_GetTokenInfo")
def get_token_info(library, slot, p_info):
    need(p_info)
    fill("CK_TOKEN_INFO", p_info, library.get_token_info(slot))


@handler("C_GetMechanismList")
def get_mechanism_list(library, slot, p_list, pul_count):
    need(pul_count)
    return ulongs_out(library.get_mechanism_list(slot), p_list, pul_count)


@handler("C_GetMechanismInfo")
def get_mechanism_info(library, slot, mech, p_info):
    need(p_info)
    p_info.ulMinKeySize, p_info.ulMaxKeySize, p_info.flags = library.get_mechanism_info(slot, mech)


@handler("C_InitToken")
def init_token(library, slot, p_pin, pin_len, p_label):
    need(p_label)
    precheck.slot(library, slot)
    library.init_token(slot, precheck.pin(library, p_pin, pin_len), data(p_label, LABEL_LEN))
