"""The audit chain's speed (issue 12): `ferrohsm audit verify`'s verifier on a generated
log of 1,000,000 records (target: under 60 s), and Audit.record() per call on an
SQLite token, one thread and 8 threads (group commit; the gate calls it per *Init on a
governed key: target 1,000 audited signs/s on one thread). Prints a small table.

    .venv/bin/python benchmarks/audit_verify.py [--records 1000000] [--calls 3000]

About a minute (most of it writing the 1 M log). No timing is asserted in the tests.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from provider.audit import Audit, Event, Signer, verify  # noqa: E402
from provider.audit import verifier as V  # noqa: E402
from provider.principal import Principal  # noqa: E402
from provider.store.sealing import Argon2id, PinPolicy  # noqa: E402
from provider.store.sqlite import SqliteStore  # noqa: E402
from tests.unit.auditgen import write_log  # noqa: E402

KEY = b"b" * 32
FAST = PinPolicy(Argon2id(memory_kib=64, time_cost=1, parallelism=1), failure_delay=0.0)
ACTOR = Principal("svc:bench", frozenset({"service"}), "pkcs11", "7", "", "pid:1")


def bench_verify(d: Path, n: int) -> dict:
    signer = Signer(Ed25519PrivateKey.generate())
    t = time.perf_counter()
    write_log(d / "log.jsonl", d / "cps.jsonl", n, KEY, signer, 100_000)
    made = time.perf_counter() - t
    size = os.path.getsize(d / "log.jsonl")
    cps = V.checkpoints_of_file(d / "cps.jsonl")
    t = time.perf_counter()
    report = verify(V.lines_of(d / "log.jsonl"), cps, signer.public, KEY)
    took = time.perf_counter() - t
    assert report.ok, report.text()
    return {"records": n, "bytes": size, "write_s": made, "verify_s": took, "checkpoints": report.checkpoints}


def bench_record(d: Path, calls: int, threads: int) -> dict:
    path = str(d / f"token-{threads}.sqlite")
    store = SqliteStore(path, pin_policy=FAST)
    store.initialize(b"bench".ljust(32), b"so-pin-1")
    audit = Audit(store, KEY)
    per = calls // threads
    lat: list = []

    def worker():
        mine = []
        for i in range(per):
            t0 = time.perf_counter()
            audit.record(Event(ACTOR, "sign.init", "key-1", 1))
            mine.append(time.perf_counter() - t0)
        lat.extend(mine)

    t = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    took = time.perf_counter() - t
    store.close()
    lat.sort()
    return {"threads": threads, "records": per * threads, "per_s": per * threads / took,
            "p50_ms": statistics.median(lat) * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "commits": audit.commits}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        v = bench_verify(d, args.records)
        print(f"verify: {v['records']:,} records ({v['bytes'] / 1e6:.0f} MB export, {v['checkpoints']} checkpoints): "
              f"{v['verify_s']:.1f} s ({v['records'] / v['verify_s']:,.0f} records/s; target < 60 s); "
              f"written in {v['write_s']:.1f} s")
        for threads in (1, 8):
            r = bench_record(d, args.calls, threads)
            print(f"record() on SQLite, {threads} thread(s): {r['per_s']:,.0f}/s, p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, {r['records']} records in {r['commits']} commits")


if __name__ == "__main__":
    main()
