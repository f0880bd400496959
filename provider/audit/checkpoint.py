"""Signed checkpoints of the audit log, and the Ed25519 key that signs them.

A checkpoint at record `seq` states the chain head there (that record's digest), the
RFC 6962 Merkle root of the records 1..seq (merkle.py; the tree keeps growing over a
prune: the frontier lets it go on), that frontier, the time, and the signing key's
public bytes. Its body is canonical JSON (record.canonical); the signature is
Ed25519 over CONTEXT || body. The store keeps (seq, head, signature || body); the
checkpoint file (`[audit] checkpoint_file`, for an auditor to copy elsewhere) holds one
line per checkpoint, `{"body":"<body>","sig":"<hex>"}`, written as it is made.

The key is a token object (label KEY_LABEL): an Ed25519 pair made at first need by the
engine's own key generation (keygen.py), the private half private, sensitive and never
extractable. The log opens its value to sign with `cryptography` (as a mechanism
would), so the key never leaves the process; the public half is what `ferrohsm audit
verify --public-key` takes (`ferrohsm audit public-key` prints it).
"""

import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .. import constants as C
from .. import keygen
from ..errors import PKCS11Error
from . import merkle
from .record import canonical, time_text

CONTEXT = b"ferrohsm audit checkpoint v1\x00"
KEY_LABEL, KEY_ID = b"ferrohsm-audit-checkpoint", b"ferrohsm-audit-checkpoint"
SIG_LEN = 64
ED25519_PARAMS = bytes.fromhex("06032b6570")        # OID 1.3.101.112


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: bytes
    root: bytes
    frontier: merkle.Frontier
    time: str
    key: bytes            # the signer's raw public key
    body: bytes
    sig: bytes

    @classmethod
    def parse(cls, body: bytes, sig: bytes) -> "Checkpoint":
        """ValueError if the body is not a checkpoint's."""
        try:
            f = json.loads(body)
            frontier = merkle.Frontier(f["seq"], [bytes.fromhex(h) for h in f["frontier"]])
            cp = cls(f["seq"], bytes.fromhex(f["head"]), bytes.fromhex(f["root"]), frontier, f["time"],
                     bytes.fromhex(f["key"]), body, sig)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from None
        if canonical(f) != body or type(cp.seq) is not int or len(sig) != SIG_LEN:
            raise ValueError("not a checkpoint in canonical form")
        if frontier.root() != cp.root:
            raise ValueError("a checkpoint whose root is not its frontier's")
        return cp

    @classmethod
    def from_row(cls, data: bytes) -> "Checkpoint":
        return cls.parse(data[SIG_LEN:], data[:SIG_LEN])

    def row(self) -> tuple:
        return self.seq, self.head, self.sig + self.body

    def line(self) -> bytes:
        return canonical({"body": self.body.decode("ascii"), "sig": self.sig.hex()}) + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> "Checkpoint":
        try:
            f = json.loads(line)
            return cls.parse(f["body"].encode("ascii"), bytes.fromhex(f["sig"]))
        except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
            raise ValueError(f"not a checkpoint line: {exc}") from None

    def signed_by(self, public: bytes) -> bool:
        if public != self.key:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(self.sig, CONTEXT + self.body)
            return True
        except (InvalidSignature, ValueError):
            return False


def make(signer, seq: int, head: bytes, frontier: merkle.Frontier, now_ns: int) -> Checkpoint:
    """A checkpoint signed by `signer` (a Signer)."""
    body = canonical({"frontier": [h.hex() for h in frontier.hashes], "head": head.hex(), "key": signer.public.hex(),
                      "root": frontier.root().hex(), "seq": seq, "time": time_text(now_ns)})
    return Checkpoint.parse(body, signer.sign(CONTEXT + body))


class Signer:
    """An Ed25519 private key to sign with, and its raw public bytes."""

    def __init__(self, private: Ed25519PrivateKey):
        self._key = private
        self.public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def token_signer(token) -> Signer:
    """The token's checkpoint key (made at first need), opened: the token's user must be
    logged in (the key is a private object). The caller holds token.lock."""
    token.refresh()
    wanted = {C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: C.CKK_EC_EDWARDS, C.CKA_LABEL: KEY_LABEL,
              C.CKA_ID: KEY_ID}
    if token.user != C.CKU_USER:
        raise PKCS11Error(C.CKR_USER_NOT_LOGGED_IN, "the audit checkpoint key needs the token's user logged in")
    found = [o for o in list(token.by_uid.values()) if token.matches(o, wanted)]
    if found:
        obj = found[0]
    else:
        common = {C.CKA_TOKEN: True, C.CKA_LABEL: KEY_LABEL, C.CKA_ID: KEY_ID,
                  C.CKA_DESTROYABLE: False, C.CKA_MODIFIABLE: False}
        _, obj = keygen.generate_key_pair(
            token, C.CKM_EC_EDWARDS_KEY_PAIR_GEN, None,
            {**common, C.CKA_CLASS: C.CKO_PUBLIC_KEY, C.CKA_VERIFY: True, C.CKA_PRIVATE: False,
             C.CKA_EC_PARAMS: ED25519_PARAMS},
            {**common, C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_SIGN: True, C.CKA_PRIVATE: True,
             C.CKA_SENSITIVE: True, C.CKA_EXTRACTABLE: False}, separated=True)
    value = token.open(obj).attrs[C.CKA_VALUE]
    return Signer(Ed25519PrivateKey.from_private_bytes(bytes(value)))


def public_key_of(token) -> bytes | None:
    """The raw public key of the token's checkpoint key (a public object: no login), or
    None before the first checkpoint made it. The caller holds token.lock or owns the token."""
    token.refresh()
    wanted = {C.CKA_CLASS: C.CKO_PUBLIC_KEY, C.CKA_LABEL: KEY_LABEL, C.CKA_ID: KEY_ID}
    for obj in list(token.by_uid.values()):
        if token.matches(obj, wanted):
            point = bytes(obj.attrs[C.CKA_EC_POINT])
            return point[2:] if point[:2] == b"\x04\x20" else point      # DER OCTET STRING of 32 bytes
    return None
