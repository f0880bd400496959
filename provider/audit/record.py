"""One audit record: what an interface or the governance code hands in (`Event`), its
canonical bytes, the hash chain and the HMAC.

A record's body is a JSON object of FIELDS (the event's, and uuid, time, seq and prev
that the log adds), encoded canonically: keys sorted, no spaces, ASCII only, integers
and strings only (no floats), so that one body has one byte string. Then
    digest = SHA-256(prev digest || body)        (the chain; prev of record 1: 32 zero bytes)
    mac    = HMAC-SHA256(hmac key, digest)
The store keeps (seq, digest, mac || body) (base.TokenStore.audit_*); an export line
is `{"mac":"<hex>","record":<body>}` with the body's bytes as they are, so a verifier
hashes exactly what was written. A message never holds key material, a PIN or
plaintext: the interfaces pass names, ids and outcomes only (and `message` is cut
at MESSAGE_MAX characters).
"""

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

from ..principal import Principal

GENESIS = bytes(32)             # the prev digest of the first record
MAC_LEN = 32
MESSAGE_MAX = 512
OUTCOMES = ("ok", "denied", "failed", "requested")
# every body has exactly these keys (the verifier refuses others)
FIELDS = ("action", "actor", "client", "correlation_id", "interface", "key_id", "key_version",
          "message", "outcome", "prev", "roles", "seq", "session", "source", "time", "uuid")
_LINE_HEAD, _LINE_MID = b'{"mac":"', b'","record":'


@dataclass(frozen=True)
class Event:
    """What happened, for whom: the caller's part of a record. `action` names the
    operation ("sign.init", "key.rotate", "approval.approve", ...); `key_version` 0
    when no version is concerned."""
    actor: Principal
    action: str
    key_id: str = ""
    key_version: int = 0
    outcome: str = "ok"
    message: str = ""

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        if not self.action or type(self.key_version) is not int or self.key_version < 0:
            raise ValueError("an event needs an action and a key version >= 0")


def body_of(event: Event, seq: int, prev: bytes, now_ns: int | None = None) -> bytes:
    """The canonical body of `event` as record `seq` after digest `prev`."""
    actor = event.actor
    now_ns = time.time_ns() if now_ns is None else now_ns
    fields = {
        "action": event.action, "actor": actor.subject, "client": actor.client,
        "correlation_id": actor.correlation_id, "interface": actor.interface,
        "key_id": event.key_id, "key_version": event.key_version,
        "message": event.message[:MESSAGE_MAX], "outcome": event.outcome, "prev": prev.hex(),
        "roles": ",".join(sorted(actor.roles)), "seq": seq, "session": actor.session,
        "source": actor.source, "time": time_text(now_ns), "uuid": str(uuid.uuid4())}
    return canonical(fields)


def canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def time_text(ns: int) -> str:
    """RFC 3339 UTC with microseconds: sorts as it reads."""
    secs, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rest // 1000:06d}Z"


def chain(prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(prev + body).digest()


def mac_of(key: bytes, digest: bytes) -> bytes:
    return hmac.new(key, digest, hashlib.sha256).digest()


def line_of(mac: bytes, body: bytes) -> bytes:
    """The export / JSON-lines form of a stored record (mac || body)."""
    return _LINE_HEAD + mac.hex().encode() + _LINE_MID + body + b"}\n"


def parse_line(line: bytes) -> tuple:
    """(mac, body) of an export line; ValueError if it is not one line_of made."""
    line = line.rstrip(b"\n")
    head, mid = len(_LINE_HEAD), len(_LINE_HEAD) + 2 * MAC_LEN
    if line[:head] != _LINE_HEAD or line[mid:mid + len(_LINE_MID)] != _LINE_MID or line[-1:] != b"}":
        raise ValueError("not an audit export line")
    return bytes.fromhex(line[head:mid].decode("ascii")), line[mid + len(_LINE_MID):-1]
