"""The REST service's speed, measured as issue 12 asks: `ferrohsm serve --insecure-dev`
as a real process (one uvicorn worker, plain HTTP on loopback, the token unlocked once,
every key use audited durably in the sqlite chain) driven by `wrk` (Debian's) with a Lua
script per route, all in one run so the ratios compare like with like:

- AES-256-GCM encrypt of 1 KiB, JWT-authenticated, against GET /v1/whoami (the same
  authentication, role check and rate-limit step, no key and no audit record) at 64
  connections: requests/s, p50/p99 from `wrk --latency`, and the server's CPU time per
  request (/proc: a figure the other processes on a shared machine disturb less);
- batch encrypt (100 items of 1 KiB per request): items/s;
- listing 5,000 keys (made through Governance directly before the server starts): a page
  of 100 (p50 over repeated requests, and the 304 of a conditional one), all 5,000 by pages;
- rotation end to end: POST rotate, then an encrypt that must carry the new version.

`python benchmarks/service.py [--seconds 10] [--keys 5000] [--write]`; --write puts the
figures in benchmarks/RESULTS-service.md. Not a test (it takes a minute or two)."""

import argparse
import base64
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import jwt  # noqa: E402

from provider import constants as C  # noqa: E402
from provider.config import Config  # noqa: E402
from provider.governance import governance_of  # noqa: E402
from provider.library import Library  # noqa: E402
from provider.principal import Principal  # noqa: E402
from provider.service.serve import _token_slot  # noqa: E402
from tests.unit.conftest import USER_PIN, init_token, make_library  # noqa: E402

SECRET = "b" * 48
CONNECTIONS = 64
BATCH = 100
LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}
# issue 12's targets: (figure, at least / at most, bound)
TARGETS = [("encrypt req/s", ">=", 2000), ("encrypt / no-op", ">=", 0.60), ("encrypt p50 ms", "<=", 10),
           ("encrypt p99 ms", "<=", 50), ("batch items/s", ">=", 20000), ("list page of 100 p50 ms", "<=", 10),
           ("list all keys ms", "<=", 200), ("list all keys, cold ms", "<=", 200),
           ("rotation end to end ms", "<=", 1000)]


def token(sub, roles, keys=None, lifetime=3600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "roles": roles, "iss": "ferrohsm", "aud": "ferrohsm", "iat": now, "nbf": now - 1,
              "exp": now + lifetime}
    if keys is not None:
        claims["keys"] = keys
    return jwt.encode(claims, SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(tmp: Path, port: int, nkeys: int) -> dict:
    """A token with the key `data` and `nkeys` more, and the environment `serve` runs in."""
    lib = make_library(tmp)
    init_token(lib, b"svc")
    lib.finalize()
    conf = tmp / "ferrohsm.conf"
    unlimited = ", ".join(f"{r} = [1e9, 1000000000]" for r in ("administrator", "operator", "auditor", "service"))
    conf.write_text(conf.read_text() + f'\n[server]\nlisten = "127.0.0.1:{port}"\npin = "env:BENCH_PIN"\n'
                                       f'token = "svc"\nrate = {{{unlimited}}}\n')
    lib = Library(Config.parse(conf.read_text(), str(conf)))
    slot = _token_slot(lib, "svc")
    session = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
    lib.login(session, C.CKU_USER, USER_PIN)
    gov = governance_of(lib, lib._token(slot))
    ops = Principal("bench", frozenset({"operator"}), interface="cli")
    gov.create_key(ops, "data", "aes-256-gcm", ["encrypt", "decrypt"])
    t0 = time.perf_counter()
    for i in range(nkeys):
        gov.create_key(ops, f"k{i:05d}", "aes-256-gcm", ["encrypt", "decrypt"])
    print(f"made {nkeys} keys through Governance in {time.perf_counter() - t0:.1f} s", flush=True)
    lib.finalize()
    return {**os.environ, "FERROHSM_CONF": str(conf), "BENCH_PIN": USER_PIN.decode(), "FERROHSM_JWT_SECRET": SECRET}


def start(env: dict, port: int, src: Path = ROOT) -> subprocess.Popen:
    """`ferrohsm serve --insecure-dev` from the source tree `src` (an A/B's other side)."""
    proc = subprocess.Popen([sys.executable, "-c", "from provider.cli import app; app()", "serve", "--insecure-dev"],
                            cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}: {proc.stdout.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("serve did not listen")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")      # utime + stime


def lua(tmp: Path, name: str, method: str, auth: str, body: dict | None = None) -> str:
    lines = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {auth}"']
    if body is not None:
        lines += ['wrk.headers["Content-Type"] = "application/json"',
                  f"wrk.body = [[{json.dumps(body, separators=(',', ':'))}]]"]
    path = tmp / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def wrk(url: str, script: str, seconds: float, connections: int, pid: int) -> dict:
    cpu = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise SystemExit(f"wrk saw failures:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {p: float(v) * UNIT[u] for p, v, u in LATENCY.findall(out)}
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": requests,
            "p50": lat["50"], "p99": lat["99"], "cpu_ms": 1000 * cpu / max(requests, 1)}


def audit_head(c: httpx.Client) -> int:
    return c.get("/healthz").json()["audit"]["head"]


def timed(fn, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def run(seconds: float, nkeys: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ferrohsm-bench-"))
    port = free_port()
    env = prepare(tmp, port, nkeys)
    proc = start(env, port)
    url = f"http://127.0.0.1:{port}"
    svc = token("bench-app", ["service"], keys=["data"])
    ops = token("bench-ops", ["operator"])
    kib = base64.b64encode(os.urandom(1024)).decode()
    encrypt = lua(tmp, "encrypt", "POST", svc, {"plaintext": kib})
    noop = lua(tmp, "whoami", "GET", svc)
    batch = lua(tmp, "batch", "POST", svc, {"items": [{"plaintext": kib}] * BATCH})
    r = {"load_before": os.getloadavg()[0], "keys": nkeys}
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            wrk(f"{url}/v1/keys/data/encrypt", encrypt, 2, CONNECTIONS, proc.pid)        # warm-up
            head = audit_head(c)
            rounds = []
            for _ in range(2):                                   # interleaved: the load drifts, both see it
                rounds.append((wrk(f"{url}/v1/whoami", noop, seconds, CONNECTIONS, proc.pid),
                               wrk(f"{url}/v1/keys/data/encrypt", encrypt, seconds, CONNECTIONS, proc.pid)))
            audited = audit_head(c) - head
            r["noop"] = _merge([n for n, _ in rounds])
            r["encrypt"] = _merge([e for _, e in rounds])
            if audited < r["encrypt"]["requests"]:
                raise SystemExit(f"{audited} audit records for {r['encrypt']['requests']} encrypts")
            r["audited"] = audited
            b = wrk(f"{url}/v1/keys/data/encrypt/batch", batch, seconds, 8, proc.pid)
            r["batch"] = {**b, "items": b["rps"] * BATCH}

            hdr = {"Authorization": f"Bearer {ops}"}
            page = lambda: c.get("/v1/keys", params={"page_size": 100}, headers=hdr).raise_for_status()  # noqa: E731
            page()
            r["page"] = statistics.median(timed(page, 50))
            etag = c.get("/v1/keys", params={"page_size": 100}, headers=hdr).headers["etag"]
            cond = lambda: c.get("/v1/keys", params={"page_size": 100},  # noqa: E731
                                 headers={**hdr, "If-None-Match": etag})
            assert cond().status_code == 304
            r["page_304"] = statistics.median(timed(cond, 50))

            def everything():
                names, tok = [], None
                while True:
                    body = c.get("/v1/keys", params={"page_size": 1000, **({"page_token": tok} if tok else {})},
                                 headers=hdr).raise_for_status().json()
                    names += [k["name"] for k in body["keys"]]
                    tok = body["next_page_token"]
                    if tok is None:
                        break
                assert len(names) == nkeys + 1, len(names)
            r["all"] = statistics.median(timed(everything, 5))
            c.post(f"/v1/keys/k{nkeys - 1:05d}/rotate", headers=hdr).raise_for_status()    # a change: cache emptied
            r["all_cold"] = timed(everything, 1)[0]
            r["page_cold"] = (c.post(f"/v1/keys/k{nkeys - 1:05d}/rotate", headers=hdr), timed(page, 1)[0])[1]

            svc_hdr = {"Authorization": f"Bearer {svc}"}

            def rotation():
                rec = c.post("/v1/keys/data/rotate", headers=hdr).raise_for_status().json()
                out = c.post("/v1/keys/data/encrypt", headers=svc_hdr, json={"plaintext": kib}).raise_for_status()
                assert out.json()["key_version"] == rec["primary"], (out.json()["key_version"], rec["primary"])
            rot = timed(rotation, 5)
            r["rotation"], r["rotation_max"] = statistics.median(rot), max(rot)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    r["load_after"] = os.getloadavg()[0]
    r["ratio"] = r["encrypt"]["rps"] / r["noop"]["rps"]
    return r


def compare(seconds: int, other: Path, rounds: int = 2) -> str:
    """A/B: the no-op and encrypt runs on a server from `other` (say `git archive` of the
    commit before a change) and from this tree, alternately on one token, in one run."""
    tmp = Path(tempfile.mkdtemp(prefix="ferrohsm-ab-"))
    port = free_port()
    env = prepare(tmp, port, 0)
    url = f"http://127.0.0.1:{port}"
    svc = token("bench-app", ["service"], keys=["data"])
    kib = base64.b64encode(os.urandom(1024)).decode()
    encrypt = lua(tmp, "encrypt", "POST", svc, {"plaintext": kib})
    batch = lua(tmp, "batch", "POST", svc, {"items": [{"plaintext": kib}] * BATCH})
    noop = lua(tmp, "whoami", "GET", svc)
    got, batches = {"A": [], "B": []}, {"A": [], "B": []}
    for _ in range(rounds):
        for side, src in (("A", other), ("B", ROOT)):
            proc = start(env, port, src)
            try:
                wrk(f"{url}/v1/keys/data/encrypt", encrypt, 2, CONNECTIONS, proc.pid)
                got[side].append((wrk(f"{url}/v1/whoami", noop, seconds, CONNECTIONS, proc.pid),
                                  wrk(f"{url}/v1/keys/data/encrypt", encrypt, seconds, CONNECTIONS, proc.pid)))
                batches[side].append(wrk(f"{url}/v1/keys/data/encrypt/batch", batch, seconds, 8, proc.pid))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    lines = [f"A = {other}, B = {ROOT}; {rounds} rounds ABAB of {seconds} s, 64 connections, load "
             f"{os.getloadavg()[0]:.1f}", "", "| side | no-op req/s | no-op CPU ms/req | encrypt req/s | p50 ms | "
             "p99 ms | encrypt CPU ms/req | ratio | batch items/s | batch CPU ms/req |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side, runs in got.items():
        n, e, b = _merge([x for x, _ in runs]), _merge([y for _, y in runs]), _merge(batches[side])
        lines.append(f"| {side} | {n['rps']:.0f} {n['runs']} | {n['cpu_ms']:.2f} | {e['rps']:.0f} {e['runs']} | "
                     f"{e['p50']:.1f} | {e['p99']:.1f} | {e['cpu_ms']:.2f} | {e['rps'] / n['rps']:.2f} | "
                     f"{b['rps'] * BATCH:,.0f} | {b['cpu_ms']:.2f} |")
    return "\n".join(lines)


def _merge(runs: list) -> dict:
    """Several wrk runs of one route: requests/s and CPU per request over all, the worse
    p50/p99."""
    return {"rps": statistics.mean(x["rps"] for x in runs), "requests": sum(x["requests"] for x in runs),
            "p50": max(x["p50"] for x in runs), "p99": max(x["p99"] for x in runs),
            "cpu_ms": statistics.mean(x["cpu_ms"] for x in runs), "runs": [round(x["rps"]) for x in runs]}


def figures(r: dict) -> dict:
    return {"encrypt req/s": r["encrypt"]["rps"], "encrypt / no-op": r["ratio"], "encrypt p50 ms": r["encrypt"]["p50"],
            "encrypt p99 ms": r["encrypt"]["p99"], "batch items/s": r["batch"]["items"],
            "list page of 100 p50 ms": r["page"], "list all keys ms": r["all"], "list all keys, cold ms": r["all_cold"],
            "rotation end to end ms": r["rotation"]}


def report(r: dict, seconds: float) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    f = figures(r)
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores ({cpu}), "
             f"Python {platform.python_version()}, `python benchmarks/service.py --seconds {seconds:g}`. "
             f"Load average {r['load_before']:.1f} before, {r['load_after']:.1f} after (other helpers' work "
             f"shares the cores; wrk -t1 runs on them too).", "",
             "| figure | measured | target | met |", "|---|---:|---|---|"]
    for name, op, bound in TARGETS:
        v = f[name]
        ok = v >= bound if op == ">=" else v <= bound
        shown = f"{v:.2f}" if v < 100 else f"{v:,.0f}"
        lines.append(f"| {name} | {shown} | {op} {bound:,} | {'yes' if ok else '**no**'} |")
    e, n = r["encrypt"], r["noop"]
    lines += ["", f"- encrypt: {e['rps']:.0f} req/s (rounds {e['runs']}), p50 {e['p50']:.2f} ms, p99 {e['p99']:.2f} ms, "
                  f"{e['cpu_ms']:.2f} ms server CPU per request; {r['audited']} audit records for "
                  f"{e['requests']} completed encrypts (wrk's in-flight ones at the end add a few)",
              f"- GET /v1/whoami (no-op): {n['rps']:.0f} req/s (rounds {n['runs']}), p50 {n['p50']:.2f} ms, "
              f"p99 {n['p99']:.2f} ms, {n['cpu_ms']:.2f} ms CPU per request",
              f"- batch of {BATCH} x 1 KiB at 8 connections: {r['batch']['rps']:.0f} req/s = "
              f"{r['batch']['items']:,.0f} items/s, {r['batch']['cpu_ms']:.2f} ms CPU per request",
              f"- list (httpx client, one connection): page of 100 p50 {r['page']:.2f} ms of 50 (304 with "
              f"If-None-Match: {r['page_304']:.2f} ms); all {r['keys']:,} + 1 by pages of 1000: {r['all']:.1f} ms "
              f"(median of 5). Cold, the first request after a change emptied the cache: page of 100 "
              f"{r['page_cold']:.1f} ms, all {r['all_cold']:.1f} ms",
              f"- rotation (POST rotate, then an encrypt carrying the new version): median {r['rotation']:.1f} ms, "
              f"max {r['rotation_max']:.1f} ms of 5"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--write", action="store_true", help="write benchmarks/RESULTS-service.md's measured section")
    ap.add_argument("--compare", type=Path, help="A/B against the server of this source tree instead")
    a = ap.parse_args()
    if a.compare:
        print(compare(a.seconds, a.compare.resolve()))
        return
    text = report(run(a.seconds, a.keys), a.seconds)
    print(text)
    if a.write:
        path = Path(__file__).with_name("RESULTS-service.md")
        old = path.read_text() if path.exists() else "# REST service speed (issue 12)\n\n<!-- measured -->\n"
        head, _, rest = old.partition("<!-- measured -->")
        tail = rest.partition("<!-- /measured -->")[2]
        path.write_text(f"{head}<!-- measured -->\n{text}\n<!-- /measured -->{tail}")


if __name__ == "__main__":
    main()
