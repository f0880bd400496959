"""Key uses through the API: the version object from `Governance.use_object`,
passed through the one gate (provider/gate.py: usage, state, floors, the audit record
of the use, fail closed), then the engine's own mechanism (mechanisms/registry.py) on
the opened key, as fn_crypto._init does. AES-256-GCM ciphertexts are
`ferrohsm:v<N>:<base64(iv || ciphertext || tag)>`; signatures are DER for ECDSA.

Wrap / unwrap: an aes-256-gcm governed key with usage wrap wraps another governed key's
version (RFC 5649 key wrap with padding, CKM_AES_KEY_WRAP_KWP) as
`ferrohsm:v<N>:<base64>` (N: the wrapping key's version): a secret key's value or a
private key's PKCS#8. The key that leaves passes gate.wrap_out (the rules C_WrapKey
applies: extractable, wrap template, governed: exportable and dual control), its
approval made or consumed by Governance.export_object. Unwrap (usage unwrap) imports
a wrapped secret key as a new governed key (Governance.import_key).

Where they run: `run()` takes a use onto the event loop when the token's lock is free
at once - no worker-thread hop, its audit records queued (gate.deferred) and the answer
held until they are durable, so many requests share one commit - and otherwise into a
worker thread, as the routes of slow work (RSA signing, key import) always go."""

import base64
import binascii
import dataclasses
import os
import re

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .. import constants as C
from .. import gate
from ..errors import PKCS11Error
from ..fn_keys import wrapped_material
from ..mechanisms import registry
from ..mechanisms.params import GcmParams
from .errors import ApiError
from .tracing import span
from starlette.concurrency import run_in_threadpool

IV_LEN, TAG_LEN = 12, 16
WRAP_MECH = C.CKM_AES_KEY_WRAP_KWP
CIPHERTEXT = re.compile(r"ferrohsm:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})\Z")
# algorithm -> (mechanism, ECDSA scalar size or 0)
SIGNING = {"ec-p256": (C.CKM_ECDSA_SHA256, 32), "ec-p384": (C.CKM_ECDSA_SHA384, 48), "ed25519": (C.CKM_EDDSA, 0),
           "rsa-2048": (C.CKM_SHA256_RSA_PKCS, 0), "rsa-3072": (C.CKM_SHA256_RSA_PKCS, 0),
           "rsa-4096": (C.CKM_SHA256_RSA_PKCS, 0)}
MACS = {"hmac-sha256": C.CKM_SHA256_HMAC}
DIGEST_LEN = {"ec-p256": 32, "ec-p384": 48}     # sign/verify by digest: ECDSA over the given hash (CKM_ECDSA)
USAGE_CKA = {"encrypt": C.CKA_ENCRYPT, "decrypt": C.CKA_DECRYPT, "sign": C.CKA_SIGN, "verify": C.CKA_VERIFY,
             "mac": C.CKA_SIGN, "mac_verify": C.CKA_VERIFY, "wrap": C.CKA_WRAP, "unwrap": C.CKA_UNWRAP}


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

    async def run(self, fn, *args):
        """fn(*args), a use of this token's keys: on the event loop if the token's lock is
        free at once (the records queued, awaited before the answer leaves), else in a
        worker thread (which waits for the lock and its records there)."""
        lock = self.gov.token.lock
        if not lock.acquire(blocking=False):
            return await run_in_threadpool(fn, *args)
        try:
            with gate.deferred() as pending:
                result = fn(*args)
        finally:
            lock.release()
        await pending.durable()
        return result

    def _key(self, principal, key: str, use: str, version: int | None, algorithms, count: int = 1,
             digest: bytes | None = None, mech: int | None = None):
        """(record, opened key object, version number, mechanism) for `use`, through the
        gate. One head check (Token.refresh) under the token's lock: the record's lookup,
        the version object and the gate all read the state it took in."""
        token = self.gov.token
        with token.lock:
            token.refresh()
            rec, obj, mech = self._checked(principal, key, use, version, algorithms, digest, mech)
            return self._gated(principal, rec, obj, use, mech, count)

    def _named(self, principal, key: str):
        """The record of `key` (a read-only view, Governance.read_key: the caller holds the
        token's lock and refreshed), if the principal's token names it."""
        rec = self.gov.read_key(key)
        if principal.keys is not None and rec.name not in principal.keys and rec.id not in principal.keys:
            raise ApiError(403, "permission_denied", "this token does not name that key")
        return rec

    def _checked(self, principal, key: str, use: str, version: int | None, algorithms, digest=None, mech=None):
        """(record, version object, mechanism) of a use, before the gate (under the
        caller's lock and head check)."""
        rec = self._named(principal, key)
        if rec.algorithm not in algorithms:
            raise ApiError(409, "failed_precondition", f"{rec.name} is {rec.algorithm}: it cannot {use} here")
        if digest is not None and len(digest) != DIGEST_LEN.get(rec.algorithm):
            raise ApiError(400, "invalid_argument", "a digest is signed by an ec-p256 (SHA-256, 32 bytes) or "
                                                    "ec-p384 (SHA-384, 48 bytes) key")
        obj = self.gov.use_object(rec, version, use)
        mech = mech or (C.CKM_AES_GCM if rec.algorithm == "aes-256-gcm" else MACS.get(rec.algorithm)
                        or (C.CKM_ECDSA if digest is not None else SIGNING[rec.algorithm][0]))
        return rec, obj, mech

    def _gated(self, principal, rec, obj, use: str, mech: int, count: int = 1):
        """The use through the gate, under the caller's lock and head check."""
        token = self.gov.token
        with span("ferrohsm.gate", **{"ferrohsm.key_id": rec.id, "ferrohsm.use": use,
                                     "ferrohsm.key_version": obj.attrs[C.CKA_FERRO_VERSION]}):
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
        sig = _signature(rec, mech, opened, message if digest is None else digest)
        return {"key_id": rec.id, "key_version": number, "signature": sig}

    def sign_batch(self, principal, key: str, items: list) -> dict:
        """[(message, None) or (None, digest)] with the primary: as encrypt_batch, one pass
        through the gate (one audit record) for the batch's messages and one for its
        digests (they use another mechanism); results in the items' order."""
        digests = [d for _, d in items if d is not None]
        if digests and len({len(d) for d in digests}) != 1:
            raise ApiError(400, "invalid_argument", "the digests of a batch are of one hash (one length)")
        passes = {}
        if len(digests) < len(items):
            passes[False] = self._key(principal, key, "sign", None, SIGNING, len(items) - len(digests))
        if digests:
            passes[True] = self._key(principal, key, "sign", None, SIGNING, len(digests), digest=digests[0])
        results = []
        for message, digest in items:
            rec, opened, number, mech = passes[digest is not None]
            results.append({"key_version": number,
                            "signature": _signature(rec, mech, opened, message if digest is None else digest)})
        return {"key_id": rec.id, "results": results}

    def wrap(self, principal, key: str, target: str, version: int | None, approval_id: str | None) -> dict:
        """Wrap version `version` (default the primary) of the governed key `target` with
        the primary of `key`. The token must name both keys."""
        token = self.gov.token
        with token.lock:
            token.refresh()
            rec, obj, mech = self._checked(principal, key, "wrap", None, ("aes-256-gcm",), mech=WRAP_MECH)
            subject = self._named(principal, target)
        if subject.id == rec.id:
            raise ApiError(400, "invalid_argument", "a key does not wrap itself")
        out, approved = self.gov.export_object(principal, subject.id, version, rec.id, approval_id)
        with token.lock:
            token.refresh()      # (after export_object's transaction: the gate sees the newest state)
            rec, opened, number, mech = self._gated(principal, rec, obj, "wrap", mech)
            gate.wrap_out(token, opened, out, principal, approved)
            wrapped = registry.get(mech).impl.wrap(opened, None, wrapped_material(token.open(out)))
        return {"key_id": rec.id, "key_version": number, "wrapped": f"ferrohsm:v{number}:{b64(wrapped)}",
                "target": {"key_id": subject.id, "name": subject.name, "algorithm": subject.algorithm,
                           "key_version": out.attrs[C.CKA_FERRO_VERSION]}}

    def unwrap(self, principal, key: str, wrapped: str, name: str, algorithm: str, usage: list,
               description: str = "") -> dict:
        """Unwrap a `ferrohsm:v<N>:` wrapped secret key with version N of `key` and import
        it as the new governed key `name` (owner: the caller)."""
        m = CIPHERTEXT.match(wrapped)
        if m is None:
            raise ApiError(400, "invalid_wrapped", "a wrapped key is ferrohsm:v<N>:<base64>")
        blob = unb64(m.group(2), "wrapped")
        rec, opened, number, mech = self._key(principal, key, "unwrap", int(m.group(1)), ("aes-256-gcm",),
                                              mech=WRAP_MECH)
        try:
            value = registry.get(mech).impl.unwrap(opened, None, blob)
        except PKCS11Error as err:
            if err.rv in (C.CKR_ENCRYPTED_DATA_INVALID, C.CKR_ENCRYPTED_DATA_LEN_RANGE):
                raise ApiError(400, "invalid_wrapped", "the wrapped key does not unwrap with this key") from None
            raise
        made = self.gov.import_key(principal, name, algorithm, usage, value, description=description,
                                   owner=principal.subject)
        return {"key_id": rec.id, "key_version": number, "key": dataclasses.asdict(made)}

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


def _signature(rec, mech: int, opened, data: bytes) -> str:
    """A signature over `data` (a message, or a digest for CKM_ECDSA), DER for ECDSA, base64."""
    sig = registry.get(mech).impl.sign_init(opened, None).oneshot(data)
    size = SIGNING[rec.algorithm][1]
    if size:
        sig = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
    return b64(sig)


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
