"""Session, login, PIN and random-number functions.

C_LoginUser: this token has no named users. A NULL or empty username makes it
C_Login (the spec's behaviour for tokens without usernames); a username is
CKR_ARGUMENTS_BAD rather than silently ignored.
C_SessionCancel ends the session's operations named by the flags
(CKF_ENCRYPT, CKF_DECRYPT, CKF_DIGEST, CKF_SIGN, CKF_VERIFY, CKF_FIND_OBJECTS,
CKF_MESSAGE_ENCRYPT, CKF_MESSAGE_DECRYPT), in the engine and the native fast path.
Callbacks (C_OpenSession's Notify) are never called, as the spec allows.
"""

from provider import constants as C

from . import native, precheck
from .handlers_common import handler
from .marshal import F, bad, data, fill, need

CANCEL_KINDS = {
    C.CKF_ENCRYPT: "encrypt", C.CKF_DECRYPT: "decrypt", C.CKF_DIGEST: "digest",
    C.CKF_SIGN: "sign", C.CKF_VERIFY: "verify", C.CKF_FIND_OBJECTS: "find",
    C.CKF_MESSAGE_ENCRYPT: "message_encrypt", C.CKF_MESSAGE_DECRYPT: "message_decrypt",
}


@handler("C_OpenSession")
def open_session(library, slot, flags, p_application, notify, ph_session):
    need(ph_session)
    ph_session[0] = library.open_session(slot, flags)


@handler("C_CloseSession")
def close_session(library, session):
    library.close_session(session)


@handler("C_CloseAllSessions")
def close_all_sessions(library, slot):
    library.close_all_sessions(slot)


@handler("C_GetSessionInfo")
def get_session_info(library, session, p_info):
    need(p_info)
    fill("CK_SESSION_INFO", p_info, library.get_session_info(session))


@handler("C_SessionCancel")
def session_cancel(library, session, flags):
    with library._lock_of(session):
        s = library._session(session)
        for bit, kind in CANCEL_KINDS.items():
            if flags & bit:
                s.end(kind)
                native.cancel(library, session, kind)


@handler("C_Login")
def login(library, session, user_type, p_pin, pin_len):
    precheck.session(library, session)
    library.login(session, user_type, precheck.pin(library, p_pin, pin_len))


@handler("C_LoginUser")
def login_user(library, session, user_type, p_pin, pin_len, p_username, username_len):
    precheck.session(library, session)
    if username_len:
        raise bad("this token has no named users")
    library.login(session, user_type, precheck.pin(library, p_pin, pin_len))


@handler("C_Logout")
def logout(library, session):
    library.logout(session)


@handler("C_InitPIN")
def init_pin(library, session, p_pin, pin_len):
    precheck.session(library, session)
    library.init_pin(session, precheck.pin(library, p_pin, pin_len))


@handler("C_SetPIN")
def set_pin(library, session, p_old, old_len, p_new, new_len):
    precheck.session(library, session)
    library.set_pin(session, precheck.pin(library, p_old, old_len), precheck.pin(library, p_new, new_len))


@handler("C_GenerateRandom")
def generate_random(library, session, p_out, length):
    """A length above [limits] max_data_len is CKR_ARGUMENTS_BAD (the spec has no
    more specific code), answered before any work."""
    if length:
        need(p_out)
    precheck.session(library, session)
    if length > library.config.limits.max_data_len:
        raise bad(f"{length} random bytes is above [limits] max_data_len")
    out = library.generate_random(session, length)
    if length:
        F.ffi.memmove(p_out, out, length)


@handler("C_SeedRandom")
def seed_random(library, session, p_seed, seed_len):
    precheck.session(library, session)
    library.seed_random(session, data(p_seed, seed_len, required=True, limit=library.config.limits.max_data_len))
