"""A synthetic audit log written straight to an export file (as Audit would write it,
without a store): the 1,000,000-record tampering test and benchmarks/audit_verify.py."""

import time

from provider.audit import checkpoint, merkle
from provider.audit.record import GENESIS, Event, body_of, chain, line_of, mac_of
from provider.principal import Principal

ACTORS = [Principal(f"svc:ci-{i}", frozenset({"service"}), "rest", f"s{i}", f"fp:{i:04x}", f"10.0.0.{i}",
                    f"req-{i}") for i in range(8)]


def write_log(path, cp_path, n: int, key: bytes, signer, every: int) -> list:
    """n records to `path`, a signed checkpoint every `every` records and at the end to
    `cp_path`; returns the checkpoints."""
    prev, frontier, cps = GENESIS, merkle.Frontier(), []
    now = time.time_ns()
    with open(path, "wb") as out:
        buf = []
        for seq in range(1, n + 1):
            event = Event(ACTORS[seq % 8], ("sign.init", "encrypt.init", "key.rotate")[seq % 3],
                          f"key-{seq % 97}", 1 + seq % 5)
            body = body_of(event, seq, prev, now + seq * 1000)
            prev = chain(prev, body)
            buf.append(line_of(mac_of(key, prev), body))
            frontier.append(merkle.leaf_hash(body))
            if seq % every == 0 or seq == n:
                out.write(b"".join(buf))
                buf = []
                cps.append(checkpoint.make(signer, seq, prev, frontier, now))
    with open(cp_path, "wb") as f:
        f.write(b"".join(cp.line() for cp in cps))
    return cps
