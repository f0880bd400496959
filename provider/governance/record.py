"""The records of governance, as the store keeps them: a governed key (its versions,
states, primary, floors and flags), a policy tag, a pending approval, a migration of a
key between backends.

Each is a token object of FerroHSM's own class (CKO_FERRO_GOVERNED_KEY,
CKO_FERRO_POLICY_TAG, CKO_FERRO_APPROVAL, CKO_FERRO_MIGRATION) whose CKA_FERRO_RECORD is the record in
canonical JSON (`encode`), so a record is versioned, compare-and-set and seen by every
process exactly as token objects are (store/base.py). The record of a key is the one
truth of its state: each version's key object carries CKA_FERRO_STATE and
CKA_FERRO_PRIMARY as a readable copy, written in the same transaction.

What a version may do (`permits`) is decided here, once, for every interface.
"""

import json
from dataclasses import asdict, dataclass, field, fields

from .. import constants as C

# --- version states (after Google Cloud KMS's CryptoKeyVersionState) --------------------
PENDING, ENABLED, DISABLED, DESTROY_SCHEDULED, DESTROYED = (
    "pending", "enabled", "disabled", "destroy_scheduled", "destroyed")
STATE_CODE = {PENDING: C.FERRO_STATE_PENDING, ENABLED: C.FERRO_STATE_ENABLED, DISABLED: C.FERRO_STATE_DISABLED,
              DESTROY_SCHEDULED: C.FERRO_STATE_DESTROY_SCHEDULED, DESTROYED: C.FERRO_STATE_DESTROYED}

ALGORITHMS = ("aes-256-gcm", "rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519", "hmac-sha256")
USAGES = ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "mac")
# a use that makes something new (needs the primary version, at or above min_encrypt_version)
# and one that reads what was made (any enabled version at or above min_decrypt_version)
PRODUCING = frozenset({"encrypt", "sign", "wrap", "mac"})
CONSUMING = frozenset({"decrypt", "verify", "unwrap", "mac_verify"})
# PKCS#11 usage attribute -> use
USE_OF_CKA = {C.CKA_ENCRYPT: "encrypt", C.CKA_DECRYPT: "decrypt", C.CKA_SIGN: "sign", C.CKA_VERIFY: "verify",
              C.CKA_WRAP: "wrap", C.CKA_UNWRAP: "unwrap", C.CKA_DERIVE: "derive"}

# RFC 5280 CRLReason names a revocation may give; a key_compromise version never returns
REVOCATION_REASONS = ("unspecified", "key_compromise", "ca_compromise", "affiliation_changed", "superseded",
                      "cessation_of_operation", "certificate_hold", "privilege_withdrawn", "aa_compromise")
COMPROMISED = frozenset({"key_compromise", "ca_compromise", "aa_compromise"})


def encode(record) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8; the same record gives the same bytes."""
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _build(cls, data: dict):
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Version:
    number: int
    state: str
    created_at: float                      # Unix seconds (UTC)
    objects: list                          # uids of its key objects: [secret] or [private, public]
    backend: str = "soft"
    enabled_at: float | None = None
    disabled_at: float | None = None
    destroy_at: float | None = None        # when a destroy_scheduled version is erased
    destroyed_at: float | None = None
    revocation: dict | None = None         # {"reason": one of REVOCATION_REASONS, "at": t, "by": subject}


@dataclass
class KeyRecord:
    id: str                                # UUID, stable for the key's life
    name: str                              # unique among governed keys; the primary's CKA_LABEL
    algorithm: str                         # ALGORITHMS
    usage: list                            # USAGES
    created_at: float
    owner: str = ""
    description: str = ""
    tags: list = field(default_factory=list)
    rotation_period_days: int | None = None    # automatic rotation (1..365), None: none
    next_rotation_at: float | None = None
    primary: int = 1
    next_version: int = 2                  # never reused: the highest version ever made + 1
    min_decrypt_version: int = 1           # one-way floors: only rise
    min_encrypt_version: int = 1           # >= min_decrypt_version
    exportable: bool = False               # one-way flags: set, never unset
    allow_plaintext_backup: bool = False
    adopted_from: str | None = None        # the uid of a plain PKCS#11 key adopted as version 1
    policy_revision: int = 1               # +1 at every change of tags, floors or flags (invalidates approvals)
    versions: list = field(default_factory=list)

    @classmethod
    def decode(cls, raw: bytes) -> "KeyRecord":
        data = json.loads(raw)
        data["versions"] = [_build(Version, v) for v in data.get("versions", [])]
        return _build(cls, data)

    def version(self, number: int) -> Version | None:
        for v in self.versions:
            if v.number == number:
                return v
        return None


@dataclass
class PolicyTag:
    name: str
    dual_control: bool = False
    quorum: int = 2
    approval_ttl_seconds: int = 86400
    retention_days: int = 0                # a version younger than this may not be destroyed
    destroy_grace_seconds: int = 86400
    rotation_period_days: int | None = None    # 1..365; None: DEFAULT_ROTATION_DAYS if auto_rotate
    auto_rotate: bool = False              # rotate the keys under it (every rotation_period_days or 90)
    security_level: str = "software"       # "hardware": refuses a software backend
    revision: int = 1

    @classmethod
    def decode(cls, raw: bytes) -> "PolicyTag":
        return _build(cls, json.loads(raw))


@dataclass
class Approval:
    id: str                                # UUID
    action: str                            # "destroy", "rollback", "export", "weaken_tag", "adopt", "migrate", ...
    request: dict                          # the canonical request the approval is for
    request_hash: str                      # SHA-256 hex of the canonical JSON of `request`
    requester: str                         # principal subject; never an approver
    key_id: str | None
    created_at: float
    expires_at: float
    policy_revision: int                   # the subject's policy_revision when asked
    quorum: int = 2
    approvals: list = field(default_factory=list)     # [{"subject", "at"}], distinct subjects
    denials: list = field(default_factory=list)
    status: str = "pending"                # pending | approved | denied | expired | executed | invalidated

    @classmethod
    def decode(cls, raw: bytes) -> "Approval":
        return _build(cls, json.loads(raw))


# --- migrations between backends (the backend design's migration record) ---------------
IN_PROGRESS, COMPLETED, FAILED, ROLLED_BACK = "in_progress", "completed", "failed", "rolled_back"
MIGRATION_STATUSES = (IN_PROGRESS, COMPLETED, FAILED, ROLLED_BACK)


@dataclass
class MovedVersion:
    """One version's move: its key objects on the source backend (kept, unusable, until
    the migration's source_erase_at) and on the destination, the SHA-256 of the wrapped
    key as sent and as received, and the proof: the test signature mechanism whose
    signature by the destination key the source's public key verified."""
    number: int
    source_backend: str
    source_objects: list
    destination_objects: list = field(default_factory=list)
    sha256_source: str = ""
    sha256_destination: str = ""
    proof: str = ""


@dataclass
class Migration:
    id: str                                # UUID
    key_id: str
    destination_backend: str
    requester: str                         # principal subject
    created_at: float
    status: str = IN_PROGRESS              # MIGRATION_STATUSES
    approval_id: str | None = None         # the dual-control approval it executed, if any
    versions: list = field(default_factory=list)      # MovedVersion
    finished_at: float | None = None
    reason: str = ""                       # why it failed / was rolled back (no key material)
    source_erase_at: float | None = None   # completed: the source copies are erased then (>= 30 days)
    source_erased_at: float | None = None

    @property
    def source_backends(self) -> list:
        return sorted({v.source_backend for v in self.versions})

    @classmethod
    def decode(cls, raw: bytes) -> "Migration":
        data = json.loads(raw)
        data["versions"] = [_build(MovedVersion, v) for v in data.get("versions", [])]
        return _build(cls, data)


def uses_of(rec) -> set:
    """The uses a key's usage set allows (a MAC key verifies what it made)."""
    uses = set(rec.usage)
    if "mac" in uses:
        uses.add("mac_verify")
    return uses


def permits(key: KeyRecord, number: int, use: str) -> str | None:
    """Why version `number` of `key` may not be used for `use` now, or None if it may.
    Producing uses need the primary version, enabled, at or above min_encrypt_version;
    consuming uses any enabled version at or above min_decrypt_version."""
    version = key.version(number)
    if version is None:
        return f"key {key.name} has no version {number}"
    if version.state != ENABLED:
        return f"version {number} of {key.name} is {version.state}"
    if use in PRODUCING:
        if number != key.primary:
            return f"version {number} of {key.name} is not the primary: it may only decrypt, verify and unwrap"
        if number < key.min_encrypt_version:
            return f"version {number} of {key.name} is below min_encrypt_version"
        return None
    if number < key.min_decrypt_version:
        return f"version {number} of {key.name} is below min_decrypt_version"
    return None
