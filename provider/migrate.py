"""Key migration between tokens (and so between backends): `ferrohsm migrate-key`.

One process opens both tokens (logged in as their users) and moves one private key:
  1. refused, with the reason, if the source backend cannot export (TPM, PIV card: keys
     made inside the device never leave it; re-create and re-certify the key instead)
     or the key was created with CKA_EXTRACTABLE false;
  2. a fresh AES-256 transport key K, in this process's memory only, given to both
     backends (each imports it as a session object and destroys it after use);
  3. the source wraps the PKCS#8 private key under K (AES key wrap with padding,
     RFC 5649 / CKM_AES_KEY_WRAP_PAD); SHA-256 of the wrapped blob is taken there and
     again by the destination before it unwraps (into its serving backend);
  4. the destination key signs a random challenge through the engine; the source's
     public key must verify it, or the new objects are destroyed;
  5. the outcome is appended to `migrations.jsonl` in the token directory (time,
     source and destination token/serial/backend, key id, both hashes, approver,
     outcome, reason) -- refusals and failures too.  The source key is never deleted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from . import constants as C
from .backends import engine
from .backends.base import KeyRef
from .backends.soft import kind_of
from .errors import PKCS11Error
from .mechanisms import registry
from .mechanisms.params import Mechanism

LOG_NAME = "migrations.jsonl"
RW = C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION
# key type -> (test signature mechanism, verify with the source public key)
CHECK = {
    C.CKK_EC: (C.CKM_ECDSA_SHA256, lambda pub, sig, msg: pub.verify(
        utils.encode_dss_signature(int.from_bytes(sig[:len(sig) // 2], "big"),
                                   int.from_bytes(sig[len(sig) // 2:], "big")),
        msg, ec.ECDSA(hashes.SHA256()))),
    C.CKK_RSA: (C.CKM_SHA256_RSA_PKCS, lambda pub, sig, msg: pub.verify(
        sig, msg, padding.PKCS1v15(), hashes.SHA256())),
}
USE = {C.CKK_EC: {C.CKA_DERIVE: True}, C.CKK_RSA: {C.CKA_DECRYPT: True}}


class Refused(PKCS11Error):
    pass


def _slot(lib, label: str) -> int:
    for sid in lib.get_slot_list(True):
        if lib.get_token_info(sid)["label"].decode("utf-8", "replace").rstrip() == label:
            return sid
    raise PKCS11Error(C.CKR_SLOT_ID_INVALID, f"no token {label!r}")


def _source(lib, session, key):
    """(backend, KeyRef) of the source key; Refused if it may not leave."""
    if engine.is_held(key):
        backend, ref = lib.backends.get(key.attrs[C.CKA_FERRO_BACKEND].decode()), engine.key_ref(key)
    else:
        backend = lib.backends.get("soft")
        der = registry.key_type(key.key_type).to_pkcs8(key.attrs)
        info = bytes(key.attrs[C.CKA_PUBLIC_KEY_INFO])
        ref = KeyRef(der, info, kind_of(serialization.load_der_public_key(info)))
    if not backend.exportable:
        raise Refused(C.CKR_KEY_UNEXTRACTABLE, f"held by {backend.name} ({backend.kind}): made inside "
                      "the device and non-exportable; re-create and re-certify it on the destination")
    if not key.flag(C.CKA_EXTRACTABLE):
        raise Refused(C.CKR_KEY_UNEXTRACTABLE, "the key was created with CKA_EXTRACTABLE false")
    if ref.kind is None:
        raise Refused(C.CKR_KEY_TYPE_INCONSISTENT, "only EC P-256/P-384 and RSA-2048 keys migrate")
    return backend, ref


def _store(lib, session, dest, ref: KeyRef, key_id: bytes, label: bytes, key_type: int) -> tuple:
    """Public and private key objects for the imported key; their handles."""
    pub_made, priv_made = engine.public_attrs(ref.public_der)
    if dest.inline:
        priv_made.update(registry.key_type(key_type).from_pkcs8(ref.blob))
        priv_made[C.CKA_EXTRACTABLE] = True
    else:
        pub_made, priv_made = engine.held_key_attrs(dest, ref, {C.CKA_EXTRACTABLE: True})
    common = {C.CKA_TOKEN: True, C.CKA_ID: key_id, C.CKA_LABEL: label}
    priv_given = {**common, C.CKA_PRIVATE: True, C.CKA_SIGN: True, **USE[key_type]}
    handles = []
    for cls, given, made in ((C.CKO_PUBLIC_KEY, common, pub_made),
                             (C.CKO_PRIVATE_KEY, priv_given, priv_made)):
        attrs = lib._new_key(lib._session(session), cls, given, made, 0, "generate")
        attrs.update({C.CKA_LOCAL: False, C.CKA_KEY_GEN_MECHANISM: C.CK_UNAVAILABLE_INFORMATION})
        if cls == C.CKO_PRIVATE_KEY:
            attrs.update({C.CKA_ALWAYS_SENSITIVE: False, C.CKA_NEVER_EXTRACTABLE: False})
        handles.append(lib._add(lib._session(session), attrs))
    return tuple(handles)


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
    with open(lib.config.token_dir / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
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
        kek = os.urandom(32)
        lib.backends.enter(sess.token, src)
        wrapped = src.wrap(ref, kek)
        sent = hashlib.sha256(wrapped).hexdigest()            # the source, over what it produced
        delivered = transfer(wrapped)
        received = hashlib.sha256(delivered).hexdigest()      # the destination, over what it got
        hashes_ = {"sha256_source": sent, "sha256_destination": received}
        record.update(hashes_)                                 # logged on a mismatch too
        if sent != received:
            raise PKCS11Error(C.CKR_WRAPPED_KEY_INVALID, "integrity hash mismatch")
        lib.backends.enter(dst_token, dest)
        new_ref = dest.unwrap(ref.kind, delivered, kek, key.attrs.get(C.CKA_LABEL, b"").decode(),
                              True, ref.public_der)
        pub_h, priv_h = _store(lib, s_dst, dest, new_ref, key_id,
                               bytes(key.attrs.get(C.CKA_LABEL, b"")), key.key_type)
        mech, verify = CHECK[key.key_type]
        challenge = os.urandom(32)
        lib.sign_init(s_dst, Mechanism(mech), priv_h)
        sig = lib.sign(s_dst, challenge, 1 << 12)
        try:
            verify(serialization.load_der_public_key(ref.public_der), sig, challenge)
        except Exception:
            for h in (priv_h, pub_h):
                lib.destroy_object(s_dst, h)
            raise PKCS11Error(C.CKR_SIGNATURE_INVALID, "test signature does not verify") from None
        return {**hashes_, "test_signature": C.name_of("CKM_", mech), "verified": True}
    finally:
        for s in (s_src, s_dst):
            lib.close_session(s)
