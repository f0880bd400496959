"""AES-256-GCM encrypt of 1 KiB through the REST service: real uvicorn (plain HTTP on
loopback, one worker), a JWT-authenticated service token, the gate's audit record in the
chain on sqlite per request. Prints p50/p99 latency on one connection and requests/s
over N client threads (httpx; the client shares the machine's cores, so wrk — the
issue's tool — would show more). Not a test: `python benchmarks/service_encrypt.py`."""

import base64
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from provider.audit import Audit  # noqa: E402
from provider.config import ServerSettings  # noqa: E402
from provider.governance import Governance  # noqa: E402
from provider.governance.auditing import recorder  # noqa: E402
from provider.service.app import create_app  # noqa: E402
from provider.service.auditing import UseAudit  # noqa: E402
from tests.service.conftest import Running, bearer  # noqa: E402
from tests.unit.govkit import Clock, new_token  # noqa: E402

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8


def main():
    tmp = Path(tempfile.mkdtemp())
    token = new_token("sqlite", tmp)
    audit = Audit(token.store, b"h" * 32)
    token.audit = UseAudit(audit)
    gov = Governance(token, recorder(audit), clock=Clock(time.time()))
    big = (1e6, 1_000_000)
    app = create_app(gov, ServerSettings(rate={r: big for r in ("administrator", "operator", "auditor", "service")}),
                     b"s" * 48)
    running = Running(app)
    with httpx.Client(base_url=running.url) as c:
        assert c.post("/v1/keys", headers=bearer(roles=("operator",)),
                      json={"name": "data", "algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]}).status_code == 201
    body = {"plaintext": base64.b64encode(b"x" * 1024).decode()}
    h = bearer(sub="ci", roles=("service",), keys=["data"], lifetime=3000)

    reader = bearer(sub="ops", roles=("operator",), lifetime=3000)
    with httpx.Client(base_url=running.url) as c:          # baseline: an authenticated read, no crypto, no audit
        n, end = 0, time.monotonic() + SECONDS
        while time.monotonic() < end:
            assert c.get("/v1/keys/data", headers=reader).status_code == 200
            n += 1
    print(f"1 connection, authenticated describe (baseline): {n / SECONDS:.0f} req/s")

    with httpx.Client(base_url=running.url) as c:
        for _ in range(50):
            c.post("/v1/keys/data/encrypt", headers=h, json=body)
        lat, end = [], time.monotonic() + SECONDS
        while time.monotonic() < end:
            t = time.perf_counter()
            assert c.post("/v1/keys/data/encrypt", headers=h, json=body).status_code == 200
            lat.append(time.perf_counter() - t)
    lat.sort()
    print(f"1 connection: {len(lat) / SECONDS:.0f} req/s, p50 {1000 * statistics.median(lat):.2f} ms, "
          f"p99 {1000 * lat[int(0.99 * len(lat))]:.2f} ms")

    counts = [0] * THREADS

    def worker(i):
        with httpx.Client(base_url=running.url) as c:
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                assert c.post("/v1/keys/data/encrypt", headers=h, json=body).status_code == 200
                counts[i] += 1
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{THREADS} connections: {sum(counts) / SECONDS:.0f} req/s")
    with token.lock:
        print(f"audit records: {token.store.audit_head()[0]}")
    running.stop()


if __name__ == "__main__":
    main()
