"""Key migration between tokens (and so between backends): `ferrohsm migrate-key`.

One process opens both tokens (logged in as their users) and moves one private key:
  1. refused, with the reason, if the key is governed (`ferrohsm key migrate` moves it,
     under its policy), if the source backend cannot export (TPM, PIV card: keys
     made inside the device never leave it; re-create and re-certify the key instead),
     the key was created with CKA_EXTRACTABLE false, or it has CKA_WRAP_WITH_TRUSTED
     (only a wrapping key the source token's SO trusts may export it, and the transport
     key is none: moving it to a token whose SO trusts other keys would be a way round);
  2. a fresh AES-256 transport key K, in this process's memory only, given to both
     backends (each imports it as a session object and destroys it after use);
  3. the source side wraps the PKCS#8 private key under K (AES key wrap with padding,
     RFC 5649 / CKM_AES_KEY_WRAP_PAD) and takes SHA-256 of the blob it produced; the
     destination side takes SHA-256 of the blob it received, compares the two (a
     mismatch is refused before anything is unwrapped) and unwraps those same bytes;
  4. the destination backend signs a random challenge with the unwrapped key; the
     source's public key must verify it, or the device key is destroyed and no object
     is made (this check uses the device directly: the key's policy, carried over
     below, may forbid signing);
  5. the new private key object gets every policy attribute of the source key,
     unchanged (PRIVATE_POLICY); the new public key object those of the source's public
     key with the same CKA_ID and key (PUBLIC_POLICY), or the defaults if it has none;
     NOT_CARRIED says what is not carried and why;
  6. the outcome is appended to `migrations.jsonl` in the token directory (time,
     source and destination token/serial/backend, key id, both hashes, approver,
     outcome, reason) -- refusals and failures too.  The source key is never deleted.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from . import constants as C
from . import files
from .backends import engine
from .backends.base import DIGEST_INFO, KeyRef
from .backends.soft import kind_of
from .errors import PKCS11Error
from .mechanisms import registry
from .mechanisms.params import Mechanism

LOG_NAME = "migrations.jsonl"
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION

# Policy attributes carried over unchanged from the source private key to the new one.
PRIVATE_POLICY = (
    C.CKA_PRIVATE, C.CKA_MODIFIABLE, C.CKA_COPYABLE, C.CKA_DESTROYABLE,
    C.CKA_LABEL, C.CKA_ID, C.CKA_SUBJECT, C.CKA_START_DATE, C.CKA_END_DATE,
    C.CKA_SIGN, C.CKA_SIGN_RECOVER, C.CKA_DECRYPT, C.CKA_UNWRAP, C.CKA_DERIVE,
    C.CKA_SENSITIVE, C.CKA_EXTRACTABLE, C.CKA_WRAP_WITH_TRUSTED, C.CKA_ALWAYS_AUTHENTICATE,
    C.CKA_ALLOWED_MECHANISMS, C.CKA_UNWRAP_TEMPLATE,
)
# ... and from the source public key (same CKA_ID, same key) to the new public key.
PUBLIC_POLICY = (
    C.CKA_PRIVATE, C.CKA_MODIFIABLE, C.CKA_COPYABLE, C.CKA_DESTROYABLE,
    C.CKA_LABEL, C.CKA_ID, C.CKA_SUBJECT, C.CKA_START_DATE, C.CKA_END_DATE,
    C.CKA_VERIFY, C.CKA_VERIFY_RECOVER, C.CKA_ENCRYPT, C.CKA_WRAP, C.CKA_DERIVE,
    C.CKA_ALLOWED_MECHANISMS, C.CKA_WRAP_TEMPLATE,
)
# What the new objects do not take from the source, and why.
NOT_CARRIED = {
    C.CKA_TRUSTED: "only the destination token's SO may mark a key trusted",
    C.CKA_LOCAL: "false: the key was not made on the destination",
    C.CKA_KEY_GEN_MECHANISM: "CK_UNAVAILABLE_INFORMATION, as for any unwrapped key",
    C.CKA_ALWAYS_SENSITIVE: "false, as for any unwrapped key (PKCS#11 3.0 4.9)",
    C.CKA_NEVER_EXTRACTABLE: "false: the key was extractable, and was extracted",
    C.CKA_TOKEN: "true: migrate-key makes token objects",
}
# A device-held destination key is held stricter than the source where the device says
# so (engine.FORCED: CKA_SENSITIVE true, CKA_COPYABLE false); never looser.

# key type -> (test signature: backend mechanism, its input from a 32-byte digest,
#              verify with the source public key)
CHECK = {
    C.CKK_EC: (C.CKM_ECDSA, lambda d: d, lambda pub, sig, msg: pub.verify(
        utils.encode_dss_signature(int.from_bytes(sig[:len(sig) // 2], "big"),
                                   int.from_bytes(sig[len(sig) // 2:], "big")),
        msg, ec.ECDSA(hashes.SHA256()))),
    C.CKK_RSA: (C.CKM_RSA_PKCS, lambda d: DIGEST_INFO[C.CKM_SHA256] + d,
                lambda pub, sig, msg: pub.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())),
}


class Refused(PKCS11Error):
    pass


def _slot(lib, label: str) -> int:
    for sid in lib.get_slot_list(True):
        if lib.get_token_info(sid)["label"].decode("utf-8", "replace").rstrip() == label:
            return sid
    raise PKCS11Error(C.CKR_SLOT_ID_INVALID, f"no token {label!r}")


def material_of(backends, key) -> tuple:
    """(backend, KeyRef) of an opened private key object: the device backend that holds
    it, or "soft" with its PKCS#8; Refused if its backend never lets a key out, or it is
    not a kind a backend holds."""
    if engine.is_held(key):
        backend, ref = backends.get(key.attrs[C.CKA_FERRO_BACKEND].decode()), engine.key_ref(key)
    else:
        backend = backends.get("soft")
        der = registry.key_type(key.key_type).to_pkcs8(key.attrs)
        info = bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO])
        ref = KeyRef(der, info, kind_of(serialization.load_der_public_key(info)))
    if not backend.exportable:
        raise Refused(C.CKR_KEY_UNEXTRACTABLE, f"held by {backend.name} ({backend.kind}): made inside "
                      "the device and non-exportable; re-create and re-certify it on the destination")
    if ref.kind is None:
        raise Refused(C.CKR_KEY_TYPE_INCONSISTENT, "only EC P-256/P-384 and RSA-2048 keys migrate")
    return backend, ref


def _source(lib, session, key):
    """(backend, KeyRef) of the source key; Refused if it may not leave."""
    if C.CKA_FERRO_KEY_ID in key.attrs:
        raise Refused(C.CKR_ACTION_PROHIBITED, "a governed key: it moves between backends through governance "
                      "(`ferrohsm key migrate`), never to another token as a plain key")
    backend, ref = material_of(lib.backends, key)
    if not key.flag(C.CKA_EXTRACTABLE):
        raise Refused(C.CKR_KEY_UNEXTRACTABLE, "the key was created with CKA_EXTRACTABLE false")
    if key.flag(C.CKA_WRAP_WITH_TRUSTED):
        raise Refused(C.CKR_KEY_NOT_WRAPPABLE, "CKA_WRAP_WITH_TRUSTED: only a wrapping key the "
                      "token's SO trusts may export it; migrate-key's transport key is not one")
    return backend, ref


def _carried(obj, names) -> dict:
    return {cka: obj.attrs[cka] for cka in names if obj is not None and cka in obj.attrs}


def _source_public(token, key):
    """The source public key object of the same CKA_ID and key, or None."""
    info = bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO])
    for o in token.index.candidates({C.CKA_ID: bytes(key.attrs.get(C.CKA_ID, b""))}):
        if o.cls == C.CKO_PUBLIC_KEY and token.visible(o) and token.loaded(o):
            pub = token.open(o)
            if bytes(pub.attrs.get(C.CKA_PUBLIC_KEY_INFO, b"")) == info:
                return pub
    return None


def _store(lib, session, dest, ref: KeyRef, key, public) -> tuple:
    """Public and private key objects for the imported key, with the source's policy;
    their handles."""
    priv_given = {**_carried(key, PRIVATE_POLICY), C.CKA_TOKEN: True}
    pub_given = {C.CKA_ID: key.attrs.get(C.CKA_ID, b""), C.CKA_LABEL: key.attrs.get(C.CKA_LABEL, b""),
                 **_carried(public, PUBLIC_POLICY), C.CKA_TOKEN: True}
    pub_made, priv_made = engine.public_attrs(ref.public_der)
    if dest.inline:
        priv_made.update(registry.key_type(key.key_type).from_pkcs8(ref.blob))
    else:           # the device's stricter values (engine.FORCED) replace the source's
        priv_given = {cka: v for cka, v in priv_given.items() if cka not in engine.FORCED}
        pub_made, priv_made = engine.held_key_attrs(dest, ref, priv_given)
    handles = []
    try:
        for cls, given, made in ((C.CKO_PUBLIC_KEY, pub_given, pub_made),
                                 (C.CKO_PRIVATE_KEY, priv_given, priv_made)):
            attrs = lib._new_key(lib._session(session), cls, given, made, 0, "generate")
            attrs.update({C.CKA_LOCAL: False, C.CKA_KEY_GEN_MECHANISM: C.CK_UNAVAILABLE_INFORMATION})
            if cls == C.CKO_PRIVATE_KEY:
                attrs.update({C.CKA_ALWAYS_SENSITIVE: False, C.CKA_NEVER_EXTRACTABLE: False})
            handles.append(lib._add(lib._session(session), attrs))
    except BaseException:
        for h in handles:          # no half-made pair stays behind (unless it is not destroyable)
            try:
                lib.destroy_object(session, h)
            except PKCS11Error:
                pass
        raise
    return tuple(handles)


def export_side(src, ref: KeyRef, kek: bytes) -> tuple[bytes, str]:
    """The source end: the wrapped key and SHA-256 of what it produced."""
    wrapped = bytes(src.wrap(ref, kek))
    return wrapped, hashlib.sha256(wrapped).hexdigest()


def receive_side(delivered: bytes, sent_hash: str, record: dict) -> bytes:
    """The destination end: SHA-256 of what it received, compared with the source's
    before anything is unwrapped; returns the bytes it hashed (the ones to unwrap)."""
    got = bytes(delivered)
    received = hashlib.sha256(got).hexdigest()
    record.update(sha256_source=sent_hash, sha256_destination=received)   # logged on a mismatch too
    if not hmac.compare_digest(sent_hash, received):
        raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "integrity hash mismatch")
    return got


def _prove(dest, new_ref: KeyRef, key_type: int, public_der: bytes) -> str:
    """The destination device signs a random challenge with the new key; the source's
    public key must verify it."""
    mech, shape, verify = CHECK[key_type]
    challenge = os.urandom(32)
    sig = dest.sign(new_ref, Mechanism(mech), shape(hashlib.sha256(challenge).digest()))
    try:
        verify(serialization.load_der_public_key(public_der), sig, challenge)
    except Exception:
        raise PKCS11Error(C.CKR_SIGNATURE_INVALID, "test signature does not verify") from None
    return C.name_of("CKM_", mech)


def move(src, ref: KeyRef, dest, key_type: int, label: str, record: dict) -> tuple:
    """Steps 2-4: the key `ref` on `src` wrapped under a fresh transport key, its hash
    checked at the destination, unwrapped on `dest` (extractable there, so it may move
    again) and proved by a test signature. Returns (the new KeyRef, the proof's
    mechanism name); `record` gets both hashes. A key `dest` made and could not prove is
    destroyed. The caller logged both backends in."""
    kek = os.urandom(32)
    wrapped, sent = export_side(src, ref, kek)
    got = receive_side(transfer(wrapped), sent, record)
    new_ref = dest.unwrap(ref.kind, got, kek, label, True, ref.public_der)
    try:
        return new_ref, _prove(dest, new_ref, key_type, ref.public_der)
    except BaseException:
        if not dest.inline:
            dest.destroy(new_ref)
        raise


def migrate_key(lib, src_label: str, src_pin: bytes, dst_label: str, dst_pin: bytes,
                key_id: bytes, approver: str) -> dict:
    """Move one key; returns the log record (outcome "ok", "refused" or "failed")."""
    record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "approver": approver, "key_id": key_id.hex(),
              "source": {"token": src_label}, "destination": {"token": dst_label}}
    try:
        record.update(_migrate(lib, src_label, src_pin, dst_label, dst_pin, key_id, record))
        record["outcome"] = "ok"
    except Refused as e:
        record.update(outcome="refused", reason=e.reason)
    except PKCS11Error as e:
        record.update(outcome="failed", reason=str(e))
    files.append_private(lib.config.token_dir / LOG_NAME, json.dumps(record) + "\n")
    return record


def transfer(blob: bytes) -> bytes:
    """The wrapped key as it reaches the destination: a copy (one process holds both ends
    today). The destination hashes and unwraps only what this returns."""
    return bytes(blob)


def _migrate(lib, src_label, src_pin, dst_label, dst_pin, key_id, record) -> dict:
    src_slot, dst_slot = _slot(lib, src_label), _slot(lib, dst_label)
    s_src, s_dst = lib.open_session(src_slot, RW), lib.open_session(dst_slot, RW)
    try:
        for s, pin in ((s_src, src_pin), (s_dst, dst_pin)):
            lib.login(s, C.CKU_USER, pin)
        sess = lib._session(s_src)
        found = [o for o in sess.token.index.candidates({C.CKA_ID: key_id}) if o.cls == C.CKO_PRIVATE_KEY
                 and sess.token.visible(o) and sess.token.loaded(o)]
        if len(found) != 1:
            raise PKCS11Error(C.CKR_KEY_HANDLE_INVALID, f"{len(found)} private keys with that id")
        key = sess.token.open(found[0])
        src, ref = _source(lib, s_src, key)
        record["source"].update(serial=sess.token.store.serial, backend=src.name)
        dst_token = lib._session(s_dst).token
        binding = lib.backends.binding(dst_token)
        dest = binding.serving() if binding is not None else lib.backends.get("soft")
        record["destination"].update(serial=dst_token.store.serial, backend=dest.name)
        lib.backends.enter(sess.token, src)
        lib.backends.enter(dst_token, dest)
        new_ref, proof = move(src, ref, dest, key.key_type, key.attrs.get(C.CKA_LABEL, b"").decode(), record)
        try:
            _store(lib, s_dst, dest, new_ref, key, _source_public(sess.token, key))
        except BaseException:
            if not dest.inline:
                dest.destroy(new_ref)
            raise
        return {"sha256_source": record["sha256_source"], "sha256_destination": record["sha256_destination"],
                "test_signature": proof, "verified": True,
                "policy": [C.name_of("CKA_", cka) for cka in PRIVATE_POLICY if cka in key.attrs]}
    finally:
        for s in (s_src, s_dst):
            lib.close_session(s)
