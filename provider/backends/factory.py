"""Building configured backends: one builder per backend type, from its config table.

FACTORIES maps a type to (builder(name, settings) -> Backend, what its login() gets):
"pin" (the user PIN as typed: a PIV card checks it itself), "derived" (a secret only a
logged-in user can compute, see SealingStore.backend_secret), or None (nothing: the
backend has its own credentials, e.g. a PKCS#11 module's PIN source).  tpm2, piv and
pkcs11 (softhsm is its SoftHSM2 preset) need optional packages and are imported only
when configured.
"""

from __future__ import annotations

import os
from .. import constants as C
from ..errors import PKCS11Error
from .soft import SoftBackend


def _private_file(path: str) -> str:
    """The text of a secret file that only this process's user can read or write:
    owned by the effective user, no group/other permission bits (checked on the open
    file, so a swap between check and read is no way round it).  Anyone who can read a
    SoftHSM2 PIN source can use every key FerroHSM keeps there, without FerroHSM."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(f"owned by uid {st.st_uid}, not by this process's user "
                                  f"(uid {os.geteuid()})")
        if st.st_mode & 0o077:
            raise PermissionError(f"mode {st.st_mode & 0o777:03o} lets group/others at it "
                                  "(chmod 600 it)")
        with os.fdopen(os.dup(fd)) as f:
            return f.read()
    finally:
        os.close(fd)


def _pin_source(spec: str) -> bytes:
    """The PIN a `pin = "file:PATH" | "env:NAME"` setting names.  A file others can read,
    or not owned by us, is refused (CKR_DEVICE_ERROR; the message names the file and the
    fix, never the PIN)."""
    how, _, where = spec.partition(":")
    read = {"file": lambda: _private_file(where).strip(), "env": lambda: os.environ[where]}
    if how not in read:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"PIN source {spec!r}: use file:PATH or env:NAME")
    try:
        return read[how]().encode()
    except (OSError, KeyError) as e:
        raise PKCS11Error(C.CKR_DEVICE_ERROR, f"PIN source {spec!r}: {e}") from None


def _tpm2(name, s):
    from .tpm2 import Tpm2Backend
    return Tpm2Backend(s["tcti"], name=name, timeout=float(s.get("timeout", 10.0)))


MGMT_ALGORITHMS = {"3des": 0x03, "aes128": 0x08, "aes192": 0x0A, "aes256": 0x0C}


def _piv(name, s):
    from .piv import DEFAULT_MGMT_KEY, PivBackend
    key = bytes.fromhex(s["management_key"]) if s.get("management_key") else DEFAULT_MGMT_KEY
    return PivBackend(s.get("reader") or None, name=name, mgmt_key=key,
                      mgmt_alg=MGMT_ALGORITHMS[s.get("management_key_algorithm", "3des")],
                      timeout=float(s.get("timeout", 10.0)), max_pin_tries=int(s.get("pin_tries", 3)))


def _pkcs11(name, s):
    from .pkcs11 import Pkcs11Backend
    env = s.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError("env must be a table of strings")
    slot = s.get("slot")
    if slot is not None and type(slot) is not int:
        raise ValueError("slot must be an integer (a CK_SLOT_ID)")
    return Pkcs11Backend(s["module"], _pin_source(s["pin"]), token_label=s.get("token_label"),
                         slot=slot, security=s.get("security", "software"), env=env,
                         timeout=float(s.get("timeout", 10.0)), name=name)


SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def _softhsm(name, s):
    """The pkcs11 backend preset for SoftHSM2: its module, software keys, `conf` as
    SOFTHSM2_CONF (configurations written for the softhsm type keep working)."""
    settings = {"module": SOFTHSM_MODULE, **s, "security": "software"}
    conf = settings.pop("conf", "")
    if conf:
        settings["env"] = {**settings.get("env", {}), "SOFTHSM2_CONF": conf}
    return _pkcs11(name, settings)


# backend type -> (builder(name, settings), what login() gets: "pin" | "derived" | None)
FACTORIES = {
    "soft": (lambda name, s: SoftBackend(name), None),
    "tpm2": (_tpm2, "derived"),
    "piv": (_piv, "pin"),
    "pkcs11": (_pkcs11, None),
    "softhsm": (_softhsm, None),
}
