"""The audit log over the API (permission audit.read): the query, filtered by key id
and action; the export, as JSON lines exactly as `ferrohsm audit export` writes them
(record.line_of of each stored record, so `ferrohsm audit verify --file` takes the
download), and the checkpoints as the checkpoint file holds them; the verifier
(provider/audit/verifier.py) run over the store with the log's own HMAC key and the
token's checkpoint public key. The store is read in chunks, each under the token's
lock, so a long export or verify never holds up the key uses."""

import json

from ..audit import verifier as V
from ..audit.checkpoint import public_key_of
from ..audit.record import line_of
from .errors import ApiError

CHUNK = 1000
SCAN_MAX = 10_000          # records one filtered query reads at most (next_after goes on from there)


def chunks(token, after: int = -1, size: int = CHUNK):
    """Lists of (seq, mac, body) after `after`, in seq order, one store read each under
    the token's lock."""
    return V.chunks_of(token.store, after, size, token.lock)


def query(token, after: int, limit: int, key_id: str | None = None, action: str | None = None) -> dict:
    """Up to `limit` records after seq `after` whose key_id and action are those given;
    next_after: the last seq read (a filtered query reads at most SCAN_MAX records)."""
    filtered = key_id is not None or action is not None
    records, last, scanned = [], after, 0
    for chunk in chunks(token, after, CHUNK if filtered else limit):
        for seq, _, body in chunk:
            scanned, last = scanned + 1, seq
            record = json.loads(body)
            if (key_id is None or record["key_id"] == key_id) and (action is None or record["action"] == action):
                records.append(record)
            if len(records) == limit or scanned >= SCAN_MAX:
                return {"records": records, "next_after": last}
        if not filtered:
            break
    return {"records": records, "next_after": last}


def export(token):
    """The export's bytes, a chunk of lines at a time."""
    for chunk in chunks(token):
        yield b"".join(line_of(mac, body) for _, mac, body in chunk)


def checkpoints(token) -> bytes:
    with token.lock:
        return b"".join(cp.line() for cp in V.checkpoints_of_store(token.store))


def verify(token) -> dict:
    """The verifier's report on the store's log: ok, records checked, the first record
    that does not verify and why, the last checkpoint."""
    audit = token.audit
    if audit is None:
        raise ApiError(503, "unavailable", "no audit log is configured for this token")
    with token.lock:
        cps = V.checkpoints_of_store(token.store)
        public = public_key_of(token)
    records = ((mac, body) for chunk in chunks(token) for _, mac, body in chunk)
    report = audit.verify(records, cps, public)
    last = max(cps, key=lambda cp: cp.seq, default=None)
    return {"ok": report.ok, "records": report.records, "first_seq": report.first, "last_seq": report.last,
            "checkpoints_verified": report.checkpoints, "failed_seq": report.bad_seq, "reason": report.reason,
            "notes": report.notes, "report": report.text(), "public_key": public.hex() if public else None,
            "last_checkpoint": None if last is None else {"seq": last.seq, "time": last.time,
                                                           "head": last.head.hex(), "root": last.root.hex()}}
