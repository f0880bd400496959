"""Shared helpers for the conformance runners: a fresh token per PKCS#11 module, subprocess
calls with an explicit environment and a timeout, and a few crypto checks done with openssl.

Both modules get the same token label and PINs. The label has a space in it on purpose:
clients must percent-encode it in pkcs11: URIs (RFC 7512).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

LABEL = "Conf Token"
PIN = "123456"
SO_PIN = "12345678"
SOFTHSM2_LIB = "/usr/lib/softhsm/libsofthsm2.so"
REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
MODULES = ["ferrohsm", "softhsm2"]
TIMEOUT = 120


class ToolError(AssertionError):
    """A client command failed; the message carries its command line and output."""


def run(cmd, env, *, cwd=None, timeout=TIMEOUT, check=True, input=None):
    """Run one client command with exactly `env` and a timeout; text output."""
    try:
        proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, timeout=timeout,
                              input=input, capture_output=True, text=True)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"timeout after {timeout}s: {' '.join(map(str, cmd))}") from exc
    if check and proc.returncode != 0:
        raise ToolError(f"rc={proc.returncode}: {' '.join(map(str, cmd))}\n"
                        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def base_env(home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "TMPDIR": str(home)}


_ferro_path: list = []


def ferrohsm_module_path() -> str:
    """Path of libferrohsm-pkcs11.so as the installed shim reports it; skip if not built."""
    if not _ferro_path:
        try:
            proc = subprocess.run([str(VENV_PY), "-c",
                                   "import pkcs11_shim; print(pkcs11_shim.module_path())"],
                                  capture_output=True, text=True, timeout=60, cwd="/",
                                  env={"PATH": "/usr/bin:/bin",
                                       "HOME": os.environ.get("HOME", "/")})
            path = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else ""
        except (subprocess.TimeoutExpired, IndexError):
            path = ""
        _ferro_path.append(path if path and Path(path).exists() else "")
    if not _ferro_path[0]:
        pytest.skip("FerroHSM module not built (pkcs11_shim.module_path() unavailable)")
    return _ferro_path[0]


@dataclass
class Token:
    """One initialised token of one PKCS#11 module, private to a tmp dir."""
    name: str
    lib: str
    tmp: Path
    env: dict
    label: str = LABEL
    pin: str = PIN
    so_pin: str = SO_PIN
    slot_id: int = -1
    facts: dict = field(default_factory=dict)

    def tool(self, *args, login=True, check=True, timeout=TIMEOUT):
        """pkcs11-tool on this token (selected by label), logged in as user unless told not."""
        cmd = ["pkcs11-tool", "--module", self.lib, "--token-label", self.label]
        if login:
            cmd += ["--login", "--pin", self.pin]
        return run(cmd + list(args), self.env, cwd=self.tmp, check=check, timeout=timeout)

    def uri(self, **attrs) -> str:
        """RFC 7512 URI for this token; values percent-encoded (ids given as bytes)."""
        parts = [f"token={quote(self.label, safe='')}"]
        for k, v in attrs.items():
            v = "".join(f"%{b:02x}" for b in v) if isinstance(v, bytes) else quote(str(v), safe="")
            parts.append(f"{k.replace('_', '-')}={v}")
        return "pkcs11:" + ";".join(parts)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def mechanisms(self) -> str:
        if "mechs" not in self.facts:
            self.facts["mechs"] = self.tool("--list-mechanisms", login=False).stdout
        return self.facts["mechs"]

    def has_mechanism(self, name: str) -> bool:
        return re.search(rf"^\s*{re.escape(name)}[,\s]", self.mechanisms(), re.M) is not None

    # key helpers shared by runners ------------------------------------------------------
    def keypair(self, key_type: str, key_id: str, label: str, *usage) -> Path:
        """Generate a token key pair with pkcs11-tool; return its public key as a PEM file."""
        flags = [f"--usage-{u}" for u in usage]
        self.tool("--keypairgen", "--key-type", key_type, "--id", key_id, "--label", label, *flags)
        return self.export_pubkey(key_id)

    def export_pubkey(self, key_id: str) -> Path:
        """The public key as PEM. pkcs11-tool 0.23 --read-object fails for P-384/P-521
        ("cannot create EVP_PKEY"), so EC keys fall back to CKA_EC_PARAMS/CKA_EC_POINT."""
        raw = self.path(f"pub-{key_id}.bin")
        got = self.tool("--read-object", "--type", "pubkey", "--id", key_id, "-o", raw,
                        login=False, check=False)
        if got.returncode == 0:
            return to_pem_pubkey(raw)
        listing = self.tool("--list-objects", "--type", "pubkey").stdout  # --id is not a filter
        block = next((b for b in listing.split("Public Key Object")
                      if re.search(rf"^\s*ID:\s*{key_id}\s*$", b, re.M)), "")
        point = re.search(r"EC_POINT:\s*([0-9a-f]+)", block)
        params = re.search(r"EC_PARAMS:\s*([0-9a-f]+)", block)
        if not (point and params):
            raise ToolError(f"cannot export public key {key_id}: {got.stderr}\n{listing}")
        raw.write_bytes(ec_spki(bytes.fromhex(params.group(1)), bytes.fromhex(point.group(1))))
        return to_pem_pubkey(raw)


_CURVES = {"06082a8648ce3d030107": "SECP256R1", "06052b81040022": "SECP384R1",
           "06052b81040023": "SECP521R1"}


def ec_spki(params: bytes, point: bytes) -> bytes:
    """DER SubjectPublicKeyInfo from CKA_EC_PARAMS (a named-curve OID) and CKA_EC_POINT
    (DER OCTET STRING, or the raw point some modules return)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec
    if point[0] == 0x04 and len(point) > 2:  # unwrap a DER OCTET STRING if it is one
        n, off = point[1], 2
        if n & 0x80:
            off = 2 + (n & 0x7F)
            n = int.from_bytes(point[2:off], "big")
        if off + n == len(point):
            point = point[off:]
    curve = getattr(ec, _CURVES[params.hex()])()
    key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    return key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)


def to_pem_pubkey(path: Path) -> Path:
    """pkcs11-tool writes DER for RSA/EC but PEM for Ed25519: normalise to PEM."""
    from cryptography.hazmat.primitives import serialization as ser
    data = path.read_bytes()
    key = (ser.load_pem_public_key(data) if data.startswith(b"-----")
           else ser.load_der_public_key(data))
    out = path.with_suffix(".pem")
    out.write_bytes(key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return out


def openssl_verify(tok: Token, pub_pem: Path, data: Path, sig: Path, *opts, digest="sha256"):
    """Verify a signature with openssl (never with the module under test)."""
    if digest:
        cmd = ["openssl", "dgst", f"-{digest}", "-verify", pub_pem, "-signature", sig]
        for o in opts:
            cmd += ["-sigopt", o]
        return run(cmd + [data], tok.env)
    return run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub_pem, "-rawin",
                "-in", data, "-sigfile", sig], tok.env)


def self_signed_cert(tok: Token, name: str, cn: str = "conformance") -> tuple[Path, Path]:
    """A throw-away software EC key and self-signed certificate (PEM and DER) for import tests."""
    key, pem, der = tok.path(f"{name}.key"), tok.path(f"{name}.pem"), tok.path(f"{name}.der")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", pem, "-subj", f"/CN={cn}", "-days", "30"], tok.env)
    run(["openssl", "x509", "-in", pem, "-outform", "DER", "-out", der], tok.env)
    return pem, der


def make_token(name: str, tmp: Path, ferro_conf: str = "") -> Token:
    """A fresh token of module `name` under tmp, initialised with LABEL, PIN and SO_PIN.
    `ferro_conf`: more TOML for FerroHSM's configuration (e.g. a [policy] table)."""
    env = base_env(tmp / "home")
    tokdir = tmp / "tokens"
    tokdir.mkdir(parents=True)
    if name == "softhsm2":
        conf = tmp / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokdir}\nobjectstore.backend = file\n"
                        "log.level = ERROR\n")
        env["SOFTHSM2_CONF"] = str(conf)
        tok = Token(name, SOFTHSM2_LIB, tmp, env)
        run(["softhsm2-util", "--init-token", "--free", "--label", LABEL,
             "--so-pin", SO_PIN, "--pin", PIN], env)
    elif name == "ferrohsm":
        lib = ferrohsm_module_path()
        conf = tmp / "ferrohsm.conf"
        conf.write_text(f'[tokens]\ndirectory = "{tokdir}"\n\n[log]\nlevel = "WARNING"\n'
                        f'file = "{tmp / "ferrohsm.log"}"\n' + ferro_conf)
        env["FERROHSM_CONF"] = str(conf)
        tok = Token(name, lib, tmp, env)
        run(["pkcs11-tool", "--module", lib, "--init-token", "--slot-index", "0",
             "--label", LABEL, "--so-pin", SO_PIN], env)
        tok.tool("--login", "--login-type", "so", "--so-pin", SO_PIN, "--init-pin",
                 "--new-pin", PIN, login=False)
    else:
        raise ValueError(name)
    tok.slot_id = find_slot_id(tok)
    return tok


def find_slot_id(tok: Token) -> int:
    """The slot id holding our token, from `pkcs11-tool --list-token-slots`."""
    out = run(["pkcs11-tool", "--module", tok.lib, "--list-token-slots"], tok.env).stdout
    slot = None
    for line in out.splitlines():
        m = re.match(r"Slot \d+ \(0x([0-9a-f]+)\)", line)
        if m:
            slot = int(m.group(1), 16)
        elif slot is not None and re.match(rf"\s*token label\s*:\s*{re.escape(LABEL)}\s*$", line):
            return slot
    raise ToolError(f"token {LABEL!r} not in slot list:\n{out}")


def skip_softhsm(tok: Token, reason: str):
    if tok.name == "softhsm2":
        pytest.skip(f"SoftHSM2 limit: {reason}")


def venv_python() -> str:
    return str(VENV_PY if VENV_PY.exists() else sys.executable)


def run_checks(tok: Token, cmd, env=None, timeout=300) -> dict:
    """Run a client program that prints PASS/FAIL/SKIP <check> lines; map check -> verdict."""
    proc = run(cmd, env or tok.env, cwd=tok.tmp, timeout=timeout, check=False)
    results = {}
    for line in proc.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        name, _, detail = rest.partition(" ")
        if verdict in ("PASS", "FAIL", "SKIP"):
            results[name] = (verdict, detail)
    results["_log"] = (f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n"
                       f"--- stderr\n{proc.stderr[-4000:]}")
    return results


def assert_check(results: dict, name: str):
    verdict, detail = results.get(name, ("MISSING", "(no line printed; crashed?)"))
    if verdict == "SKIP":
        pytest.skip(detail)
    assert verdict == "PASS", f"{name}: {verdict} {detail}\n{results['_log']}"


def client_env(tok: Token) -> dict:
    """Environment for an in-process Python client of the module (and python-pkcs11's tests)."""
    return dict(tok.env, PYTHONDONTWRITEBYTECODE="1", PKCS11_MODULE=tok.lib,
                PKCS11_TOKEN_LABEL=tok.label, PKCS11_TOKEN_PIN=tok.pin,
                PKCS11_TOKEN_SO_PIN=tok.so_pin)


def check_names(path: Path) -> list:
    """Names of the @check functions of a client check program, without importing it."""
    return re.findall(r"^@check\ndef (\w+)\(", Path(path).read_text(), re.M)
