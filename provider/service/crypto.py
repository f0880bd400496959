"""Key uses through the API: the version object from `Governance.version_object`,
passed through the one gate (provider/gate.py: usage, state, floors, the audit record
of the use, fail closed), then the engine's own mechanism (mechanisms/registry.py) on
the opened key, as fn_crypto._init does. AES-256-GCM ciphertexts are
`ferrohsm:v<N>:<base64(iv || ciphertext || tag)>`; signatures are DER for ECDSA."""

import base64
import binascii
import os
import re

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .. import constants as C
from .. import gate
from ..errors import PKCS11Error
from ..mechanisms import registry
from ..mechanisms.params import GcmParams
from .errors import ApiError
from .tracing import span

IV_LEN, TAG_LEN = 12, 16
CIPHERTEXT = re.compile(r"ferrohsm:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})\Z")
# algorithm -> (mechanism, ECDSA scalar size or 0)
SIGNING = {"ec-p256": (C.CKM_ECDSA_SHA256, 32), "ec-p384": (C.CKM_ECDSA_SHA384, 48), "ed25519": (C.CKM_EDDSA, 0),
           "rsa-2048": (C.CKM_SHA256_RSA_PKCS, 0), "rsa-3072": (C.CKM_SHA256_RSA_PKCS, 0),
           "rsa-4096": (C.CKM_SHA256_RSA_PKCS, 0)}
MACS = {"hmac-sha256": C.CKM_SHA256_HMAC}
DIGEST_LEN = {"ec-p256": 32, "ec-p384": 48}     # sign/verify by digest: ECDSA over the given hash (CKM_ECDSA)
USAGE_CKA = {"encrypt": C.CKA_ENCRYPT, "decrypt": C.CKA_DECRYPT, "sign": C.CKA_SIGN, "verify": C.CKA_VERIFY,
             "mac": C.CKA_SIGN, "mac_verify": C.CKA_VERIFY}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_argument", f"{what} is not base64") from None


class Crypto:
    def __init__(self, gov, metrics=None):
        self.gov = gov
        self.metrics = metrics

    def _key(self, principal, key: str, use: str, version: int | None, algorithms, count: int = 1,
             digest: bytes | None = None):
        """(record, opened key object, version number) for `use`, through the gate."""
        rec = self.gov.get_key(key)
        if principal.keys is not None and rec.name not in principal.keys and rec.id not in principal.keys:
            raise ApiError(403, "permission_denied", "this token does not name that key")
        if rec.algorithm not in algorithms:
            raise ApiError(409, "failed_precondition", f"{rec.name} is {rec.algorithm}: it cannot {use} here")
        if digest is not None and len(digest) != DIGEST_LEN.get(rec.algorithm):
            raise ApiError(400, "invalid_argument", "a digest is signed by an ec-p256 (SHA-256, 32 bytes) or "
                                                    "ec-p384 (SHA-384, 48 bytes) key")
        obj = self.gov.version_object(rec.id, version, use)
        mech = C.CKM_AES_GCM if rec.algorithm == "aes-256-gcm" else MACS.get(rec.algorithm) \
            or (C.CKM_ECDSA if digest is not None else SIGNING[rec.algorithm][0])
        token = self.gov.token
        with span("ferrohsm.gate", **{"ferrohsm.key_id": rec.id, "ferrohsm.use": use,
                                     "ferrohsm.key_version": obj.attrs[C.CKA_FERRO_VERSION]}), token.lock:
            token.refresh()
            opened = gate.use(token, obj, USAGE_CKA[use], mech, principal)
        if self.metrics is not None:
            self.metrics.crypto.labels(rec.algorithm, use).inc(count)
        return rec, opened, obj.attrs[C.CKA_FERRO_VERSION], mech

    def encrypt(self, principal, key: str, plaintext: bytes, aad: bytes) -> dict:
        return self.encrypt_batch(principal, key, [(plaintext, aad)], single=True)

    def encrypt_batch(self, principal, key: str, items: list, single: bool = False) -> dict:
        """[(plaintext, aad)] under the primary: one pass through the gate (one audit
        record) for the whole batch, a fresh random IV per item."""
        rec, opened, number, mech = self._key(principal, key, "encrypt", None, ("aes-256-gcm",), len(items))
        impl = registry.get(mech).impl
        out = []
        for plaintext, aad in items:
            iv = os.urandom(IV_LEN)
            sealed = impl.encrypt_init(opened, GcmParams(iv, 8 * IV_LEN, aad, 8 * TAG_LEN)).oneshot(plaintext)
            out.append(f"ferrohsm:v{number}:{b64(iv + sealed)}")
        if single:
            return {"key_id": rec.id, "key_version": number, "ciphertext": out[0]}
        return {"key_id": rec.id, "key_version": number, "ciphertexts": out}

    def decrypt(self, principal, key: str, ciphertext: str, aad: bytes) -> dict:
        number, iv, sealed = _parsed(ciphertext)
        rec, opened, number, mech = self._key(principal, key, "decrypt", number, ("aes-256-gcm",))
        plain = _open(registry.get(mech).impl, opened, iv, sealed, aad)
        return {"key_id": rec.id, "key_version": number, "plaintext": b64(plain)}

    def decrypt_batch(self, principal, key: str, items: list) -> dict:
        """[(ciphertext, aad)]: each version named passes the gate once; an item that
        does not parse or authenticate gets its own error, the others their plaintext."""
        parsed, versions = [], {}
        for ciphertext, aad in items:
            try:
                parsed.append((*_parsed(ciphertext), aad))
                versions[parsed[-1][0]] = versions.get(parsed[-1][0], 0) + 1
            except ApiError as err:
                parsed.append(err)
        keys = {n: self._key(principal, key, "decrypt", n, ("aes-256-gcm",), count) for n, count in versions.items()}
        results = []
        for item in parsed:
            if isinstance(item, ApiError):
                results.append({"error": {"code": item.code, "message": item.message}})
                continue
            number, iv, sealed, aad = item
            rec, opened, _, mech = keys[number]
            try:
                results.append({"key_version": number,
                                "plaintext": b64(_open(registry.get(mech).impl, opened, iv, sealed, aad))})
            except ApiError as err:
                results.append({"error": {"code": err.code, "message": err.message}})
        return {"results": results}

    def sign(self, principal, key: str, message: bytes | None, digest: bytes | None = None) -> dict:
        rec, opened, number, mech = self._key(principal, key, "sign", None, SIGNING, digest=digest)
        sig = registry.get(mech).impl.sign_init(opened, None).oneshot(message if digest is None else digest)
        size = SIGNING[rec.algorithm][1]
        if size:
            sig = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
        return {"key_id": rec.id, "key_version": number, "signature": b64(sig)}

    def mac(self, principal, key: str, message: bytes) -> dict:
        rec, opened, number, mech = self._key(principal, key, "mac", None, MACS)
        tag = registry.get(mech).impl.sign_init(opened, None).oneshot(message)
        return {"key_id": rec.id, "key_version": number, "mac": b64(tag)}

    def mac_verify(self, principal, key: str, message: bytes, tag: bytes, version: int | None) -> dict:
        rec, opened, number, mech = self._key(principal, key, "mac_verify", version, MACS)
        return {"key_id": rec.id, "key_version": number, "valid": _verified(mech, opened, message, tag)}

    def verify(self, principal, key: str, message: bytes | None, signature: bytes, version: int | None,
               digest: bytes | None = None) -> dict:
        rec, opened, number, mech = self._key(principal, key, "verify", version, SIGNING, digest=digest)
        message = message if digest is None else digest
        size = SIGNING[rec.algorithm][1]
        if size:
            try:
                r, s = decode_dss_signature(signature)
                signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
            except (ValueError, OverflowError):
                return {"key_id": rec.id, "key_version": number, "valid": False}
        return {"key_id": rec.id, "key_version": number, "valid": _verified(mech, opened, message, signature)}


def _parsed(ciphertext: str) -> tuple:
    """(version, iv, sealed) of a `ferrohsm:v<N>:<base64>` ciphertext."""
    m = CIPHERTEXT.match(ciphertext)
    if m is None:
        raise ApiError(400, "invalid_ciphertext", "a ciphertext is ferrohsm:v<N>:<base64>")
    try:
        raw = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_ciphertext", "the ciphertext is not base64") from None
    if len(raw) < IV_LEN + TAG_LEN:
        raise ApiError(400, "invalid_ciphertext", "the ciphertext is too short")
    return int(m.group(1)), raw[:IV_LEN], raw[IV_LEN:]


def _open(impl, opened, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
    ctx = impl.decrypt_init(opened, GcmParams(iv, 8 * IV_LEN, aad, 8 * TAG_LEN))
    try:
        return ctx.oneshot(sealed)
    except PKCS11Error as err:
        if err.rv == C.CKR_ENCRYPTED_DATA_INVALID:
            raise ApiError(400, "invalid_ciphertext", "the ciphertext or its aad does not authenticate") from None
        raise


def _verified(mech: int, key, message: bytes, signature: bytes) -> bool:
    """Does `signature` (or a MAC) verify over `message`? A wrong one is False, not an error."""
    try:
        registry.get(mech).impl.verify_init(key, None).oneshot(message, signature)
        return True
    except PKCS11Error as err:
        if err.rv not in (C.CKR_SIGNATURE_INVALID, C.CKR_SIGNATURE_LEN_RANGE):
            raise
        return False
