"""The offline verifier: walk a log (an export file, or the store's rows) record by
record and report the first one that does not verify.

Checked for each record: it parses, its seq is the next one, its `prev` is the digest
of the record before it (the first: GENESIS, or the anchor checkpoint's head after a
prune), and, given the HMAC key, its MAC. At each checkpoint's seq the chain head and
the Merkle root computed so far must be the checkpoint's, and each checkpoint must be
signed by the trusted public key. A log that ends before the last checkpoint held
(its tail truncated) fails, naming the first missing seq. So a single record edited,
deleted, inserted or moved is caught where it is (a MAC, a seq, or a prev), and one
that rewrites the chain from some point on is caught by the next checkpoint.
"""

import json
from contextlib import nullcontext
from dataclasses import dataclass, field

from . import merkle
from .checkpoint import Checkpoint
from .record import FIELDS, GENESIS, MAC_LEN, chain, mac_of, parse_line

_leaf, _sha_chain = merkle.leaf_hash, chain
_NFIELDS = len(FIELDS)


@dataclass
class Report:
    ok: bool = True
    records: int = 0                 # records that verified
    first: int = 0                   # seq of the first record, 0: none
    last: int = 0                    # seq of the last record that verified
    checkpoints: int = 0             # checkpoints matched
    bad_seq: int | None = None       # the first record that does not verify
    reason: str = ""
    notes: list = field(default_factory=list)

    def fail(self, seq, reason: str) -> "Report":
        self.ok, self.bad_seq, self.reason = False, seq, reason
        return self

    def text(self) -> str:
        if self.ok:
            return (f"OK: {self.records} records (seq {self.first}..{self.last}), "
                    f"{self.checkpoints} checkpoints verified")
        at = "" if self.bad_seq is None else f"record {self.bad_seq}: "
        return f"FAILED at {at}{self.reason} ({self.records} records verified before it)"


def lines_of(path) -> "iter":
    """(mac, body) of each line of an export file."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield parse_line(line)


def chunks_of(store, after: int = -1, size: int = 10_000, lock=None) -> "iter":
    """Lists of (seq, mac, body) of a store's records after seq `after`, in seq order,
    one store read each, under `lock` if one is given (the service's token lock, taken
    per read: a long export or verify never holds up the key uses)."""
    lock = lock if lock is not None else nullcontext()
    while True:
        with lock:
            rows = store.audit_read(after, size)
        if not rows:
            return
        yield [(seq, data[:MAC_LEN], data[MAC_LEN:]) for seq, _, data in rows]
        after = rows[-1][0]


def rows_of(store, chunk: int = 10_000) -> "iter":
    """(mac, body) of each record in a store, in seq order."""
    for rows in chunks_of(store, size=chunk):
        for _, mac, body in rows:
            yield mac, body


def checkpoints_of_file(path) -> list:
    with open(path, "rb") as f:
        return [Checkpoint.from_line(line) for line in f if line.strip()]


def checkpoints_of_store(store) -> list:
    return [Checkpoint.from_row(data) for _, _, data in store.audit_checkpoints()]


def verify(records, checkpoints: list, public_key: bytes | None, hmac_key: bytes | None = None) -> Report:
    """Verify `records` ((mac, body) in order) against `checkpoints` (Checkpoint, any
    order; those before the log's first record serve as its anchor). Without a public
    key the checkpoints are not trusted and only the chain (and MACs) are checked."""
    report = Report()
    cps = {}
    for cp in checkpoints:
        if public_key is not None and not cp.signed_by(public_key):
            return report.fail(cp.seq, "checkpoint signature does not verify with the public key")
        cps[cp.seq] = cp
    if public_key is None:
        cps = {}
        report.notes.append("no public key: checkpoints not checked (chain and MACs only)")
    it = iter(records)
    try:
        mac, body = next(it)
    except StopIteration:
        last = max(cps, default=0)
        return report.fail(1, f"the log is empty but a checkpoint covers {last} records") if last else report
    except ValueError as exc:
        return report.fail(None, f"unreadable line: {exc}")
    try:
        first = json.loads(body)["seq"]
    except (ValueError, KeyError, TypeError):
        return report.fail(None, "the first record does not parse")
    if first == 1:
        prev, frontier = GENESIS, merkle.Frontier()
    elif first - 1 in cps:
        anchor = cps[first - 1]
        prev, frontier = anchor.head, anchor.frontier.copy()
        report.notes.append(f"starts after the anchor checkpoint at {anchor.seq}")
    else:
        missing = max((s for s in cps if s < first), default=0) + 1
        return report.fail(missing, f"the log starts at record {first} with no signed anchor checkpoint at "
                                    f"{first - 1}: records from {missing} on are missing")
    report.first = expected = first
    append, loads = frontier.append, json.loads
    while True:
        try:
            fields = loads(body)
            seq, claimed = fields["seq"], fields["prev"]
        except (ValueError, KeyError, TypeError):
            return report.fail(expected, "the record does not parse")
        if len(fields) != _NFIELDS:
            return report.fail(expected, "the record's fields are not an audit record's")
        if seq != expected:
            return report.fail(expected, f"found record {seq} where {expected} belongs "
                                         "(deleted, inserted or reordered)")
        if claimed != prev.hex():
            return report.fail(seq, "its prev is not the digest of the record before it "
                                    "(this record or the one before it was changed)")
        digest = _sha_chain(prev, body)
        if hmac_key is not None and mac_of(hmac_key, digest) != mac:
            return report.fail(seq, "its HMAC does not verify (the record was changed)")
        append(_leaf(body))
        cp = cps.get(seq)
        if cp is not None:
            if cp.head != digest or cp.root != frontier.root():
                return report.fail(seq, f"the checkpoint at {seq} does not match the log up to it")
            report.checkpoints += 1
        prev, report.records, report.last = digest, report.records + 1, seq
        expected = seq + 1
        try:
            mac, body = next(it)
        except StopIteration:
            break
        except ValueError as exc:
            return report.fail(expected, f"unreadable line: {exc}")
    last_cp = max(cps, default=0)
    if last_cp > report.last:
        return report.fail(report.last + 1, f"the log ends at {report.last} but the checkpoint at {last_cp} "
                                            "covers more (its tail was truncated)")
    return report
