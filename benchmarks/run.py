"""Benchmark FerroHSM against SoftHSM2 and OpenSSL; writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run.py [--rounds 2] [--seconds 0.7] [--out benchmarks/RESULTS.md]

Builds benchmarks/bench.c with gcc, makes fresh tokens for both modules in a
temporary directory (a crypto token, and tokens holding 1,000 and 5,000 data
objects), then runs the client against FerroHSM and SoftHSM2 and
`openssl speed -evp aes-256-gcm` (the ceiling) in turn, A B C A B C. Every figure
is the median over the rounds. Then the scale figures (FerroHSM only, --scale N
objects, default 100,000, filled in one store transaction): a new process's
C_Initialize + open + C_Login less the PIN derivation, its memory, and find-by-label
p50/p99 (`bench ... startup N`, one process per round), and C_Login (`bench ... login 5`;
benchmarks/login.py measures it alone, and the first login of a first-release token).
About six minutes on a 2-core machine.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import write_report  # noqa: E402

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN, PIN = "12345678", "123456"
OBJECT_TOKENS = (1000, 5000)
SCALE_LABEL = "scale"


def sh(*args, env=None, timeout=900) -> str:
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{args[:3]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build(tmp: Path) -> Path:
    from pkcs11_shim.build import native_header
    (tmp / "ferro_pkcs11.h").write_text(native_header())
    exe = tmp / "bench"
    sh("gcc", "-O2", "-Wall", "-I", tmp, "-o", exe, HERE / "bench.c", "-ldl", "-lpthread")
    return exe


class Module:
    """One PKCS#11 module with its own token directory and tokens."""

    def __init__(self, name: str, path: str, env: dict):
        self.name, self.path, self.env = name, path, env

    def init_token(self, label: str) -> None:
        raise NotImplementedError

    def bench(self, exe: Path, label: str, mode: str, arg) -> dict:
        out = sh(exe, self.path, label, PIN, mode, arg, env=self.env)
        return {m[0]: (None if m[1] == "n/a" else float(m[1]), m[2])
                for m in re.findall(r"^figure (\S+) (\S+) (\S+)$", out, re.M)}


class Ferro(Module):
    def __init__(self, root: Path):
        root.mkdir()
        conf = root / "ferrohsm.conf"
        conf.write_text(f'[tokens]\ndirectory = "{root / "tokens"}"\n[log]\nlevel = "ERROR"\n')
        self.cli = Path(sys.executable).parent / "ferrohsm"
        env = {**os.environ, "FERROHSM_CONF": str(conf)}
        super().__init__("FerroHSM", sh(self.cli, "module-path", env=env).strip(), env)

    def init_token(self, label):
        sh(self.cli, "init-token", "--label", label, "--so-pin", SO_PIN, "--pin", PIN, env=self.env)


class SoftHsm(Module):
    def __init__(self, root: Path):
        (root / "tokens").mkdir(parents=True)
        conf = root / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n"
                        "log.level = ERROR\nslots.removable = false\n")
        super().__init__("SoftHSM2", SOFTHSM, {**os.environ, "SOFTHSM2_CONF": str(conf)})

    def init_token(self, label):
        sh("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN,
           env=self.env)


def populate_fast(ferro: "Ferro", label: str, n: int) -> None:
    """n public data objects "obj-<i>" on token `label`, written by the engine in one
    store transaction (a C client making them one durable C_CreateObject at a time
    takes minutes for 100,000)."""
    from provider import attrtypes, constants as C
    from provider.config import Config
    from provider.library import Library
    os.environ["FERROHSM_CONF"] = ferro.env["FERROHSM_CONF"]
    lib = Library(Config.load())
    try:
        (slot,) = [s for s in lib.get_slot_list(True)
                   if lib.get_token_info(s)["label"].rstrip() == label.encode()]
        s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        fixed = [(C.CKA_CLASS, attrtypes.encode(C.CKA_CLASS, C.CKO_DATA)), (C.CKA_TOKEN, b"\x01"),
                 (C.CKA_PRIVATE, b"\x00"), (C.CKA_VALUE, b"a value of thirty-two bytes.....")]
        with lib.tokens[slot].transaction():
            for i in range(n):
                lib.create_object(s, fixed + [(C.CKA_LABEL, b"obj-%d" % i)])
    finally:
        lib.finalize()
        del os.environ["FERROHSM_CONF"]


def openssl_speed(seconds: int) -> dict:
    """ops/s of `openssl speed -evp aes-256-gcm` at 64 B and 4 KiB, MB/s at 1 MiB; the same
    with `-multi 2` (two processes) under the names ending in _2p."""
    out = {}
    for multi in ((), ("-multi", 2)):
        for size, name in ((64, "gcm_64"), (4096, "gcm_4k"), (1 << 20, "gcm_1m")):
            text = sh("openssl", "speed", *multi, "-evp", "aes-256-gcm", "-seconds", seconds, "-bytes", size)
            kbytes = float(re.findall(r"^aes-256-gcm\s+([\d.]+)k", text, re.M | re.I)[-1])
            out[name + ("_2p" if multi else "")] = kbytes * 1000 / 1e6 if size == 1 << 20 else kbytes * 1000 / size
    return out


def versions() -> dict:
    def first(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"machine": f"{os.cpu_count()} cores, {cpu}", "openssl": first("openssl", "version"),
            "softhsm2": first("dpkg-query", "-W", "-f", "${Version}", "softhsm2"),
            "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=0.8, help="time per figure per run")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--scale", type=int, default=100_000, help="objects for the start-up figures (0: skip)")
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ferrohsm-bench-") as tmp:
        tmp = Path(tmp)
        exe = build(tmp)
        modules = [Ferro(tmp / "ferro"), SoftHsm(tmp / "softhsm")]
        for m in modules:
            m.init_token("bench")
            for n in OBJECT_TOKENS:
                m.init_token(f"objects{n}")
                print(f"{m.name}: {n} token objects ...", flush=True)
                m.bench(exe, f"objects{n}", "populate", n)
        samples, ceilings = {m.name: {} for m in modules}, {}
        for r in range(args.rounds):
            for m in modules:                                  # A B A B
                print(f"round {r + 1}: {m.name}", flush=True)
                runs = [m.bench(exe, "bench", "crypto", args.seconds)]
                runs += [m.bench(exe, f"objects{n}", "objects", args.seconds) for n in OBJECT_TOKENS]
                runs += [m.bench(exe, "bench", "login", 5)]            # C_Login + C_Logout (issue 11)
                for figures in runs:
                    for name, (value, unit) in figures.items():
                        samples[m.name].setdefault(name, ([], unit))[0].append(value)
            print(f"round {r + 1}: openssl speed", flush=True)
            for name, value in openssl_speed(1).items():
                ceilings.setdefault(name, []).append(value)
        if args.scale:
            ferro = modules[0]
            ferro.init_token(SCALE_LABEL)
            print(f"FerroHSM: {args.scale} token objects in one transaction ...", flush=True)
            populate_fast(ferro, SCALE_LABEL, args.scale)
            for r in range(args.rounds):
                print(f"round {r + 1}: start-up with {args.scale} objects", flush=True)
                for name, (value, unit) in ferro.bench(exe, SCALE_LABEL, "startup", args.scale).items():
                    samples["FerroHSM"].setdefault(name, ([], unit))[0].append(value)
    medians = {mod: {name: (statistics.median(v) if None not in v else None, unit)
                     for name, (v, unit) in figs.items()} for mod, figs in samples.items()}
    ceiling = {name: statistics.median(v) for name, v in ceilings.items()}
    write_report(Path(args.out), medians, ceiling, versions(), args, time.time() - started, samples)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
