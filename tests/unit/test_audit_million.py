"""The verifier on a generated log of 1,000,000 records (an export file, checkpoints
every 100,000 and at the end): each kind of single-record tampering - edit, deletion,
insertion, reordering - at the first, the last and random positions, and a truncated
tail against the last checkpoint, is caught, at the record where it is. (Every
position of every kind is covered on a small log in test_audit.py; the speed is
benchmarks/audit_verify.py's.)"""

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provider.audit import Signer, verify
from provider.audit import verifier as V

from .auditgen import write_log

N = 1_000_000
KEY = b"m" * 32
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    d = tmp_path_factory.mktemp("million")
    signer = Signer(Ed25519PrivateKey.generate())
    cps = write_log(d / "audit.jsonl", d / "checkpoints.jsonl", N, KEY, signer, 100_000)
    return d / "audit.jsonl", V.checkpoints_of_file(d / "checkpoints.jsonl"), signer.public, cps


def tampered(path, kind, k):
    """The export's (mac, body) stream with one change of `kind` at 0-based index k."""
    held = None
    for i, (mac, body) in enumerate(V.lines_of(path)):
        if kind == "edit" and i == k:
            yield mac, body.replace(b'"outcome":"ok"', b'"outcome":"failed"')
        elif kind == "delete" and i == k:
            continue
        elif kind == "insert" and i == k:
            yield held if held else (mac, body)          # a replayed copy of the record before
            yield mac, body
        elif kind == "reorder" and i == k:
            held = (mac, body)
            continue
        elif kind == "reorder" and i == k + 1:
            yield mac, body
            yield held
        elif kind == "truncate" and i == k:
            return
        else:
            yield mac, body
        held = (mac, body) if kind == "insert" else held
    if kind == "insert" and k == N:
        yield held                                       # appended after the last


def test_the_untouched_log_verifies(log):
    path, cps, public, _ = log
    report = verify(V.lines_of(path), cps, public, KEY)
    assert report.ok and report.records == N and report.checkpoints == 10, report.text()


RNG = random.Random(12)
MID = sorted(RNG.randrange(1, N - 1) for _ in range(2))
CASES = ([("edit", k) for k in (0, *MID, N - 1)] + [("delete", k) for k in (0, *MID, N - 1)]
         + [("insert", k) for k in (0, *MID, N)] + [("reorder", k) for k in (0, *MID, N - 2)]
         + [("truncate", k) for k in (MID[0], N - 1)])


@pytest.mark.parametrize("kind,k", CASES)
def test_each_tampering_is_caught_where_it_is(log, kind, k):
    path, cps, public, _ = log
    report = verify(tampered(path, kind, k), cps, public, KEY)
    assert not report.ok, (kind, k)
    # caught at the record changed, missing or out of place (an insertion at the very
    # start is a copy of record 1 before it: indistinguishable from one after it)
    assert report.bad_seq == (2 if (kind, k) == ("insert", 0) else k + 1), report.text()


def test_without_the_hmac_key_the_checkpoints_catch_an_edit_of_the_last_record(log):
    path, cps, public, _ = log
    report = verify(tampered(path, "edit", N - 1), cps, public, None)
    assert not report.ok and report.bad_seq == N and "checkpoint" in report.reason
