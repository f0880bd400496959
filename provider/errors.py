"""The engine's one error type: a CK_RV with a reason, and for the two-call
output convention the size the caller must supply."""

from . import constants as C


class PKCS11Error(Exception):
    def __init__(self, rv: int, reason: str = "", needed: int | None = None):
        self.rv = rv
        self.reason = reason
        self.needed = needed
        super().__init__(f"{C.name_of('CKR_', rv)}{': ' + reason if reason else ''}")
