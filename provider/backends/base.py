"""The device layer's contract: what the engine asks of a key-holding backend.

A backend generates keys, uses them and destroys them; it never hands out private
key material unless `exportable` says it can.  The engine persists each key's
`KeyRef.blob` (opaque to the engine: TPM2B_PUBLIC+TPM2B_PRIVATE for a TPM, a slot
reference for a card) next to its own attributes, and passes it back on use.

Every device call goes through `DeviceWorker.call`, so a dead or hung device costs
a bounded wait and gives a PKCS11Error, never a hang:
  - device unreachable / broken connection  -> CKR_DEVICE_ERROR
  - card pulled / reader gone               -> CKR_DEVICE_REMOVED / CKR_TOKEN_NOT_PRESENT
  - wrong PIN or object auth                -> CKR_PIN_INCORRECT (tries counted by the device)
  - device says locked                      -> CKR_PIN_LOCKED
Mechanisms are `provider.mechanisms.params.Mechanism` values with spec numbers from
`provider.constants`:
  CKM_ECDSA          data is a hash (20/28/32/48/64 bytes), result raw r||s
  CKM_RSA_PKCS       sign: data is a DER DigestInfo (no decrypt: see CKM_RSA_X_509)
  CKM_RSA_X_509      decrypt only: the raw RSA private operation, a k-byte block out;
                     the engine removes PKCS#1 v1.5 padding itself, with implicit
                     rejection (engine._pkcs1_decrypt, rsapad), so no device's own
                     padding check can become an oracle
  CKM_RSA_PKCS_PSS   data is the hash, param PssParams
  CKM_RSA_PKCS_OAEP  decrypt, param OaepParams
  CKM_ECDH1_DERIVE   derive(), param Ecdh1DeriveParams (CKD_NULL), raw shared secret
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .. import constants as C
from ..errors import PKCS11Error

KEY_KINDS = ("ec-p256", "ec-p384", "rsa-2048")
OPERATIONS = ("sign", "decrypt", "derive")
# every key kind generates and signs; RSA decrypts; EC derives (ECDH)
FULL_CAPABILITIES = frozenset({(op, k) for op in ("generate", "sign") for k in KEY_KINDS}
                              | {("decrypt", "rsa-2048"), ("derive", "ec-p256"), ("derive", "ec-p384")})


@dataclass(frozen=True)
class Health:
    """A backend's answer to a health probe: down (not ok), degraded (works, but something
    is wrong: a PIN count low, slow answers), or available."""
    ok: bool
    reason: str = ""
    degraded: bool = False


@dataclass(frozen=True)
class KeyRef:
    """What the engine stores for a backend-held key."""
    blob: bytes            # opaque to the engine; only the backend parses it
    public_der: bytes      # SubjectPublicKeyInfo DER
    kind: str              # one of KEY_KINDS


class Backend(ABC):
    name: str = ""
    kind: str = "software"         # "software" | "hardware"
    exportable: bool = False       # can keys created extractable leave it (wrap())?
    inline: bool = False           # True: the engine keeps the key material itself (soft)

    @abstractmethod
    def health(self) -> Health: ...

    @abstractmethod
    def capabilities(self) -> frozenset:
        """frozenset of (operation, key kind), e.g. ("sign", "ec-p256")."""

    def login(self, secret: bytes) -> None:
        """The engine passes the user's secret (token PIN or derived from it)."""

    def logout(self) -> None:
        """Forget whatever login() kept."""

    def pin_tries_left(self) -> int | None:
        """Remaining tries as the device counts them, None if unknown."""
        return None

    def pin_flags(self) -> int:
        """CKF_USER_PIN_* flags from the device's own PIN counter (0: it has none)."""
        return 0

    def place(self, label: str, in_use: list) -> str:
        """The label to generate a key under, given the KeyRefs this token already
        holds here (a card picks a free key slot; others take the label as it is)."""
        return label

    @abstractmethod
    def generate(self, kind: str, label: str) -> KeyRef: ...

    @abstractmethod
    def load(self, ref: KeyRef) -> None:
        """Check that the key is usable on the device now (raises if not)."""

    @abstractmethod
    def sign(self, ref: KeyRef, mechanism, data: bytes) -> bytes: ...

    def decrypt(self, ref: KeyRef, mechanism, data: bytes) -> bytes:
        raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{self.name}: no decrypt")

    def derive(self, ref: KeyRef, mechanism, peer_point: bytes) -> bytes:
        raise PKCS11Error(C.CKR_MECHANISM_INVALID, f"{self.name}: no derive")

    def wrap(self, ref: KeyRef, kek: bytes) -> bytes:
        """The private key as PKCS#8, wrapped with AES key wrap with padding (RFC 5649)
        under the 32-byte `kek` (key migration); only keys created extractable."""
        raise PKCS11Error(C.CKR_KEY_UNEXTRACTABLE, f"{self.name}: keys never leave the device")

    def unwrap(self, kind: str, wrapped: bytes, kek: bytes, label: str,
               extractable: bool, public_der: bytes) -> KeyRef:
        """Import a key that wrap() produced (sensitive; extractable as asked).
        `public_der` is the key's SubjectPublicKeyInfo, known to the caller."""
        raise PKCS11Error(C.CKR_FUNCTION_NOT_SUPPORTED, f"{self.name}: no key import")

    @abstractmethod
    def destroy(self, ref: KeyRef) -> None: ...

    def close(self) -> None:
        """Release the device connection (the backend reconnects on next use)."""

    def accepts(self, op: str, mech: int) -> bool:
        """Whether the device takes mechanism `mech` (what the engine asks of it: the
        module's list above) for `op`; the engine asks at *Init so a refusal is
        CKR_MECHANISM_INVALID there, not at the operation."""
        return True

    def supports(self, op: str, kind: str) -> None:
        if (op, kind) not in self.capabilities():
            raise PKCS11Error(C.CKR_KEY_FUNCTION_NOT_PERMITTED if op != "generate"
                              else C.CKR_MECHANISM_INVALID, f"{self.name}: {op} {kind}")


class DeviceTimeout(PKCS11Error):
    """A device call overran its deadline (CKR_DEVICE_ERROR); the call was abandoned."""


def _nothing() -> None:
    pass


def _after(prior, fn, *args):
    """fn(*args) once `prior` (an abandoned call's last task, or None) is done."""
    if prior is not None:
        try:
            prior.result()
        except Exception:       # its failure was the abandoned caller's
            pass
    return fn(*args)


class DeviceWorker:
    """Runs device calls on one worker thread with a deadline.

    Device libraries (ESAPI, PC/SC) block in C with no timeout of their own.  A
    call that overruns is abandoned: the caller gets CKR_DEVICE_ERROR at once, the
    worker is replaced, and `on_abandon` runs on the old worker after the stuck
    call returns (so it can close the connection that call was using).  Callers
    catch DeviceTimeout to start over with a new connection object.  The next call
    waits, within its own deadline, until the abandoned one and its `on_abandon`
    are done: the stuck call, once it returns, still talks to the device (a TPM
    without a resource manager: it flushes handles the new connection reuses)."""

    def __init__(self, name: str, timeout: float):
        self.name, self.timeout = name, timeout
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._abandoned: cf.Future | None = None    # the abandoned worker's last task

    def _new_pool(self):
        return cf.ThreadPoolExecutor(1, thread_name_prefix=f"ferrohsm-{self.name}")

    def call(self, fn, *args, timeout: float | None = None, on_abandon=None):
        with self._lock:
            prior = self._abandoned
            if prior is not None and prior.done():
                prior = self._abandoned = None
            try:
                fut = self._pool.submit(_after, prior, fn, *args)
            except RuntimeError:        # the interpreter is exiting (its pools shut down): a
                return fn(*args)        # C_Finalize from an atexit handler runs the call itself
            try:
                return fut.result(timeout or self.timeout)
            except cf.TimeoutError:
                old, self._pool = self._pool, self._new_pool()
                self._abandoned = old.submit(on_abandon or _nothing)
                old.shutdown(wait=False)
                raise DeviceTimeout(C.CKR_DEVICE_ERROR,
                                    f"{self.name}: no answer within {timeout or self.timeout:.1f} s")

    def close(self):
        self._pool.shutdown(wait=False)


HASH_SIZES = {C.CKM_SHA_1: 20, C.CKM_SHA224: 28, C.CKM_SHA256: 32,
              C.CKM_SHA384: 48, C.CKM_SHA512: 64}
MGF_FOR_HASH = {C.CKM_SHA_1: C.CKG_MGF1_SHA1, C.CKM_SHA224: C.CKG_MGF1_SHA224,
                C.CKM_SHA256: C.CKG_MGF1_SHA256, C.CKM_SHA384: C.CKG_MGF1_SHA384,
                C.CKM_SHA512: C.CKG_MGF1_SHA512}
# DER DigestInfo prefixes (RFC 8017 §9.2 note 1), keyed by the digest they carry.
DIGEST_INFO = {
    C.CKM_SHA_1: bytes.fromhex("3021300906052b0e03021a05000414"),
    C.CKM_SHA224: bytes.fromhex("302d300d06096086480165030402040500041c"),
    C.CKM_SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    C.CKM_SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    C.CKM_SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}


def split_digest_info(data: bytes) -> tuple[int, bytes]:
    """(hash mechanism, digest) of a DER DigestInfo, or CKR_DATA_INVALID."""
    for mech, prefix in DIGEST_INFO.items():
        if data.startswith(prefix) and len(data) == len(prefix) + HASH_SIZES[mech]:
            return mech, data[len(prefix):]
    raise PKCS11Error(C.CKR_DATA_INVALID, "CKM_RSA_PKCS sign needs a DigestInfo here")


def hash_for_size(n: int) -> int:
    for mech, size in HASH_SIZES.items():
        if size == n:
            return mech
    raise PKCS11Error(C.CKR_DATA_LEN_RANGE, f"{n}-byte hash")


def pss_hash(mechanism, data: bytes) -> tuple[int, int]:
    """(hash mechanism, salt length) of CKM_RSA_PKCS_PSS over `data` (a digest)."""
    p = mechanism.param
    if p is None or HASH_SIZES.get(p.hash_alg) != len(data) \
            or MGF_FOR_HASH[p.hash_alg] != p.mgf:
        raise PKCS11Error(C.CKR_MECHANISM_PARAM_INVALID, "PSS hash/MGF/data length")
    return p.hash_alg, p.salt_len
