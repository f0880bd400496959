"""What the engine asks of a token's persistent store.

One TokenStore per token.  The store owns the token record (label, serial, PIN
verifiers, retry counters), the token master key, and the token objects.

Sealing: attribute values whose types the engine marks sensitive (CKA_VALUE of a
secret or EC private key, the RSA private components, ...) are never written in
clear.  They are sealed with AES-256-GCM, the additional data binding each value
to its token, object and attribute type:
  - objects with CKA_PRIVATE true: under the token master key, a random 256-bit key
    that the SO PIN and the user PIN each unwrap through a slow KDF; so such values
    can be written and opened only while someone is logged in;
  - public objects (CKA_PRIVATE false): under the token's public sealing key, kept
    in the store itself.  This binds and integrity-checks the value, but gives no
    secrecy beyond the file's permissions, exactly as a public object promises
    nobody secrecy (SoftHSM2 keeps public objects unencrypted too).
Loaded records carry a `Sealed` placeholder for each sealed value; the engine opens
it with `unseal` when a key is used, and a record that fails its check is refused.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Sealed:
    """A sealed attribute value as loaded; open it with TokenStore.unseal."""
    blob: bytes


class TokenStore(ABC):
    # --- the token record ---------------------------------------------------
    @abstractmethod
    def initialized(self) -> bool: ...

    @abstractmethod
    def initialize(self, label: bytes, so_pin: bytes) -> None:
        """C_InitToken. A fresh store: create the record, master key, SO PIN.
        An initialized one: check the SO PIN first (counting a failure, raising
        CKR_PIN_INCORRECT / CKR_PIN_LOCKED), then destroy every object, forget the
        user PIN, and start again with a new master key.  `label` is 32 bytes."""

    @property
    @abstractmethod
    def label(self) -> bytes: ...

    @property
    @abstractmethod
    def serial(self) -> str:
        """16 printable characters, unique per token, fixed at initialization."""

    @abstractmethod
    def user_pin_initialized(self) -> bool: ...

    @abstractmethod
    def pin_flags(self) -> int:
        """CKF_USER_PIN_COUNT_LOW / _FINAL_TRY / _LOCKED and the CKF_SO_PIN_* twins,
        from the durable failure counters."""

    # --- PINs -----------------------------------------------------------------
    @abstractmethod
    def login(self, user_type: int, pin: bytes) -> None:
        """Check the PIN of CKU_SO or CKU_USER. Increments the failure counter
        durably *before* the check and resets it after success, so a killed
        process still counts the try. Raises CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
        CKR_USER_PIN_NOT_INITIALIZED. On success the store holds the master key."""

    @abstractmethod
    def logout(self) -> None:
        """Forget the master key."""

    @abstractmethod
    def init_pin(self, pin: bytes) -> None:
        """C_InitPIN (SO logged in): set the user PIN, reset its counter and lock."""

    @abstractmethod
    def set_pin(self, user_type: int, old_pin: bytes, new_pin: bytes) -> None:
        """C_SetPIN: check `old_pin` as `login` does, then re-wrap under `new_pin`."""

    # --- objects --------------------------------------------------------------
    @abstractmethod
    def save_object(self, uid: str, attrs: dict, sensitive: frozenset) -> None:
        """Insert or replace a token object, durably (committed before return).
        `attrs` maps CKA -> typed value (see provider.attrtypes); values whose type
        is in `sensitive` are sealed as described above."""

    @abstractmethod
    def delete_object(self, uid: str) -> None: ...

    @abstractmethod
    def changes(self, cursor) -> tuple:
        """(new_cursor, upserts, deleted): objects written and uids deleted since
        `cursor` (None = everything) by this or any other process. `upserts` is a
        list of (uid, attrs) with Sealed placeholders. Cheap when nothing changed."""

    @abstractmethod
    def unseal(self, uid: str, cka: int, value: Sealed) -> bytes:
        """Open a sealed value; CKR_USER_NOT_LOGGED_IN if its key is not held,
        CKR_DEVICE_ERROR (logged) if its integrity check fails."""

    @abstractmethod
    def close(self) -> None: ...
