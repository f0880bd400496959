"""The one table of mechanisms the token offers.

Each family module calls `register(...)` at import time with an implementation
object. What a mechanism can do is read off the methods its implementation
defines, so CK_MECHANISM_INFO.flags can never claim an operation that is not
there (and never miss one that is). Family-specific bits (EC curve flags,
message-based AEAD) come in `extra_flags`.

Implementation protocol (define only what the mechanism supports):

  encrypt_init(key, param) -> CipherCtx     decrypt_init(key, param) -> CipherCtx
  sign_init(key, param)    -> SignCtx       verify_init(key, param)  -> VerifyCtx
  digest_init(param)       -> DigestCtx
  generate_key(param, template) -> dict     attributes to add to the new secret key
  generate_key_pair(param, pub_template, priv_template) -> (dict, dict)
  wrap(wrapping_key, param, key_bytes) -> bytes
  unwrap(unwrapping_key, param, wrapped) -> bytes
  derive(base_key, param, template, resolve) -> dict   attributes of the new key;
         resolve(handle) -> key object, for parameters that name other keys

  CipherCtx:  update(data) -> bytes, final() -> bytes, oneshot(data) -> bytes,
              multipart: bool (False: single-part only; the engine buffers Update/Final)
  SignCtx:    update(data), final() -> bytes, oneshot(data) -> bytes, multipart
  VerifyCtx:  update(data), final(signature), oneshot(data, signature), multipart;
              a bad signature raises CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE
  DigestCtx:  update(data), final() -> bytes, oneshot(data) -> bytes, multipart

  and the lengths, told without changing the context (the two-call convention,
  see session.py), each raising the mechanism's length error for an input it
  cannot take, before the input is read:
    out_len(n)     output of oneshot over n bytes (verify: the signature's length),
                   or None when only the data tells - then oneshot must be a pure
                   function of its input (it is computed to learn the length);
    update_len(n)  CipherCtx with multipart: output of update(n bytes) now, exact;
    final_len()    multipart contexts: output (verify: signature) length of final().

`key` is the engine's object (provider.objects.Obj): typed attributes in
`key.attrs`, sealed values already opened, and `key.cache`, a dict a family may
use to keep parsed key objects (the engine empties it when the key changes).
Contexts raise PKCS11Error; the engine ends the operation on any error except
CKR_BUFFER_TOO_SMALL (which the engine handles itself).
"""

import threading
from dataclasses import dataclass

from .. import constants as C
from ..errors import PKCS11Error

# operation method -> the CKF_ bit it earns in CK_MECHANISM_INFO.flags
OPERATION_FLAGS = {
    "encrypt_init": C.CKF_ENCRYPT,
    "decrypt_init": C.CKF_DECRYPT,
    "digest_init": C.CKF_DIGEST,
    "sign_init": C.CKF_SIGN,
    "verify_init": C.CKF_VERIFY,
    "generate_key": C.CKF_GENERATE,
    "generate_key_pair": C.CKF_GENERATE_KEY_PAIR,
    "wrap": C.CKF_WRAP,
    "unwrap": C.CKF_UNWRAP,
    "derive": C.CKF_DERIVE,
}


@dataclass(frozen=True)
class Entry:
    type: int
    impl: object
    min_key: int
    max_key: int
    flags: int

    def supports(self, method: str) -> bool:
        return bool(self.flags & OPERATION_FLAGS[method])


_TABLE: dict[int, Entry] = {}
_KEY_TYPES: dict[int, object] = {}


def register(mech: int, impl, min_key: int = 0, max_key: int = 0, extra_flags: int = 0) -> None:
    flags = extra_flags
    for method, bit in OPERATION_FLAGS.items():
        if callable(getattr(impl, method, None)):
            flags |= bit
    _TABLE[mech] = Entry(mech, impl, min_key, max_key, flags)


def get(mech: int) -> Entry:
    _load_families()
    entry = _TABLE.get(mech)
    if entry is None:
        raise PKCS11Error(C.CKR_MECHANISM_INVALID, C.name_of("CKM_", mech))
    return entry


def register_key_type(key_type: int, handler) -> None:
    """Per key type (CKK_) knowledge the engine needs outside any one mechanism:

      complete(obj_class, attrs) -> dict   check a created/unwrapped key's attributes
            (CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCOMPLETE, ...) and return the
            attributes derived from them (CKA_VALUE_LEN, CKA_MODULUS_BITS, CKA_EC_POINT
            of a private key, CKA_PUBLIC_KEY_INFO, ...)
      to_pkcs8(attrs) -> bytes           private key -> PKCS#8 PrivateKeyInfo (wrap)
      from_pkcs8(der) -> dict            PKCS#8 -> private key attributes (unwrap)
    Secret key types need only `complete`.
    """
    _KEY_TYPES[key_type] = handler


def key_type(key_type: int):
    _load_families()
    handler = _KEY_TYPES.get(key_type)
    if handler is None:
        raise PKCS11Error(C.CKR_ATTRIBUTE_VALUE_INVALID, "unsupported key type " + C.name_of("CKK_", key_type))
    return handler


def all_mechanisms() -> list[int]:
    _load_families()
    return sorted(_TABLE)


_loaded = False
_loading = threading.RLock()


def _load_families() -> None:
    """Import every family module once; each registers its mechanisms. Threads that
    ask while the first one imports wait for it (the service's first concurrent
    requests saw a half-filled table: CKR_MECHANISM_INVALID)."""
    global _loaded
    if _loaded:
        return
    with _loading:
        if not _loaded:
            from . import families  # noqa: F401  (the import registers them)
            _loaded = True
