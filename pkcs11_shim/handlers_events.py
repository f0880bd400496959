"""Slot events and the legacy parallel functions: C_WaitForSlotEvent,
C_GetFunctionStatus, C_CancelFunction.

C_GetFunctionStatus and C_CancelFunction answer CKR_FUNCTION_NOT_PARALLEL, as
PKCS#11 3.0 section 5.20 says for these legacy functions (SoftHSM2 does too),
and CKR_CRYPTOKI_NOT_INITIALIZED before C_Initialize like every function (the
wrapper, handlers_common). C_WaitForSlotEvent: provider/slot_events.py; it
checks pReserved (must be NULL) and then pSlot (must not be NULL), both
CKR_ARGUMENTS_BAD.
"""

from provider import constants as C

from .handlers_common import handler
from .marshal import F, bad, need


@handler("C_GetFunctionStatus")
def get_function_status(library, session):
    return C.CKR_FUNCTION_NOT_PARALLEL


@handler("C_CancelFunction")
def cancel_function(library, session):
    return C.CKR_FUNCTION_NOT_PARALLEL


@handler("C_WaitForSlotEvent")
def wait_for_slot_event(library, flags, p_slot, p_reserved):
    if p_reserved != F.NULL:
        raise bad("pReserved must be NULL")
    need(p_slot)
    # no library lock here: the wait polls (briefly locked) and sleeps unlocked
    p_slot[0] = library.slot_events.wait(library.poll_slot_event, block=not flags & C.CKF_DONT_BLOCK)
