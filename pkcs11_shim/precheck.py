"""What a handler checks before it copies a caller's buffer.

A caller may state a length larger than its buffer; reading it crashes the
host. So the handlers check first what can be checked without reading (the
session or slot handle, the configured length limits) and copy after, so that
everything short of a wild pointer gets its answer, and the right one:
  - a PIN whose stated length is outside [pin] min_length..max_length is
    CKR_PIN_LEN_RANGE before a byte is read. The 3.0 tables do not list it for
    C_Login; we answer it there too (issue 9): such a PIN cannot be right, and
    it is not counted as a wrong PIN.
"""

from provider import constants as C
from provider.errors import PKCS11Error

from .marshal import data


def session(library, handle: int) -> None:
    """CKR_SESSION_HANDLE_INVALID for a handle that names no open session."""
    library._session(handle)


def slot(library, slot_id: int) -> None:
    """CKR_SLOT_ID_INVALID for a slot that does not exist."""
    library._token(slot_id)


def pin(library, p, n: int) -> bytes:
    """The PIN at p, its length checked against the configuration first."""
    conf = library.config
    if not conf.pin_min <= n <= conf.pin_max:
        raise PKCS11Error(C.CKR_PIN_LEN_RANGE, f"a PIN of {n} bytes: [pin] allows {conf.pin_min}..{conf.pin_max}")
    return data(p, n, required=True)
