"""The script language of tests/e2e/c/output_drive.c, and the building blocks
test_output_matrix.py writes its cases with: a Script collects driver commands
and, per group of commands, the check its answers must pass; `sequence` is one
operation (init, then single-part or Updates and a Final) in one call pattern,
`matrix` every shape x pattern of one; `pattern_ok` holds the two-call rules
every call's log is checked against; key builders make session objects.
"""

import struct

from provider import constants as C

from .conftest import USER_PIN

OK, BTS = C.CKR_OK, C.CKR_BUFFER_TOO_SMALL
PATTERNS = ("plain", "null", "null2", "small")


def hx(b: bytes) -> str:
    return b.hex() or "-"


def ul(n: int) -> bytes:
    return struct.pack("=L" if struct.calcsize("L") == 4 else "=Q", n)


def splits(n: int) -> list[list[int]]:
    """1, 2 and 3 chunks of odd sizes (for n >= 3)."""
    a = max(1, n // 3) | 1
    b = max(1, n // 2 - 5) | 1
    return [[n], [a, n - a], [1, b, n - 1 - b]] if n > 2 else [[n]]


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for s in sizes:
        out.append(data[i:i + s])
        i += s
    return out


class Script:
    """Commands for the driver, and what each group of answers must be."""

    def __init__(self):
        self.lines: list[str] = ["mechs"]
        self.checks: list = []
        self.objects = 0
        self.covered: set[int] = set()

    def obj(self, attrs: dict) -> str:
        def enc(v):
            return ul(v) if isinstance(v, int) and not isinstance(v, bool) else (b"\x01" if v is True else v)
        self.lines.append("create " + " ".join(f"{t:x}:{hx(enc(v))}" for t, v in attrs.items()))
        self.checks.append(("create", len(self.lines) - 1, 1, lambda a: a[0].split()[0] == "0" or "create failed"))
        self.objects += 1
        return f"@{self.objects - 1}"

    def group(self, name: str, lines: list[str], check) -> None:
        self.checks.append((name, len(self.lines), len(lines), check))
        self.lines += lines

    def run(self, token, exe, native: bool) -> list[str]:
        log = token.root / "debug.log"          # to see that the native path was taken
        conf = token.root / "debug.conf"
        conf.write_text(token.conf.read_text().replace('level = "ERROR"', f'level = "DEBUG"\nfile = "{log}"'))
        env = {**token.env, "FERROHSM_CONF": str(conf), "FERROHSM_NATIVE": "1" if native else "0"}
        proc = token.run("env", "-i", *[f"{k}={v}" for k, v in env.items()], exe, token.module, "e2e", USER_PIN,
                         input="\n".join(self.lines).encode() + b"\n", check=False, timeout=600)
        out = proc.stdout.decode().splitlines()
        assert "ready" in out, proc.stdout.decode()[:2000] + proc.stderr.decode()[-2000:]
        answers = out[out.index("ready") + 1:]
        assert len(answers) == len(self.lines), (len(answers), len(self.lines), proc.stderr.decode()[-2000:])
        failures = []
        for name, start, n, check in self.checks:
            verdict = check(answers[start:start + n])
            if verdict is not True:
                failures.append(f"native={native} {name}: {verdict}\n    "
                                + "\n    ".join(f"{c}  ->  {a[:200]}" for c, a in
                                               zip(self.lines[start:start + n], answers[start:start + n])))
        assert not failures, f"{len(failures)} of {len(self.checks)} checks failed:\n" + "\n".join(failures[:25])
        handed = log.read_text() if log.exists() else ""
        for kind in ("encrypt", "decrypt", "sign"):
            assert (f"{kind} handed to the native fast path" in handed) == native, kind
        return answers


def parse(answer: str) -> tuple[int, bytes, list[tuple[int, int]]]:
    rv, out, log = (answer.split() + ["-", "-"])[:3]
    queries = [] if log == "-" else [tuple(int(x, 16) if i == 0 else int(x) for i, x in enumerate(q.split(":")))
                                     for q in log.split(",")]
    return int(rv, 16), bytes.fromhex(out) if out != "-" else b"", queries


def pattern_ok(pattern: str, queries, out: bytes, in_len: int | None):
    """The two-call rules on one call's log: queries answer CKR_OK and a length that
    suffices (an Update's at least its input's), repeated queries agree, a 0-byte
    buffer is too small exactly when output is due."""
    if pattern in ("null", "null2"):
        if any(rv != OK for rv, _ in queries) or len({n for _, n in queries}) != 1:
            return f"queries {queries}"
        need = queries[0][1]
        if need < len(out) or (in_len is not None and need < in_len):
            return f"query answered {need} for {len(out)} bytes out, {in_len} in"
    if pattern == "small":
        (rv, need), = queries
        if (rv == BTS) != (need > 0) or rv not in (OK, BTS) or need < len(out):
            return f"too-small call: {queries}"
    return True


def sequence(script: Script, name, op, mech, param, key, chunks, pattern, expect, fail_rv=None, *,
             data=b"", final=b""):
    """One operation: init, then single-part over `data` (chunks None) or Updates
    and a Final (with `final`: the signature of a C_VerifyFinal).
    `expect(out) -> True or a reason`; with fail_rv the last call must fail so."""
    lines = [f"init {op} {mech:x} {param} {key}"]
    calls = []
    if chunks is None:
        lines.append(f"call {op} one {pattern} {hx(data)}")
        calls.append(("one", None))
    else:
        for c in chunks:
            lines.append(f"call {op} upd {pattern} {hx(c)}")
            calls.append(("upd", len(c)))
        lines.append(f"call {op} fin {pattern} {hx(final)}")
        calls.append(("fin", None))

    def check(answers):
        if answers[0] != "0":
            return f"init rv {answers[0]}"
        out = b""
        for i, ((fn, in_len), answer) in enumerate(zip(calls, answers[1:])):
            rv, part, queries = parse(answer)
            last = i == len(calls) - 1
            if fail_rv is not None and last:
                return True if rv == fail_rv and not part else f"rv {rv:#x}, want {fail_rv:#x}"
            if rv != OK:
                return f"{fn} rv {rv:#x}"
            if op in "ED" or fn != "upd":
                verdict = pattern_ok(pattern, queries, part, in_len if op in "ED" and fn == "upd" else None)
                if verdict is not True:
                    return verdict
            out += part
        return expect(out)
    script.group(name, lines, check)


def matrix(script: Script, name, op, mech, param, key, data, expect, fail_rv=None, patterns=PATTERNS, final=b""):
    """Every shape x pattern of one operation over `data`."""
    script.covered.add(mech)
    for chunks in [None] + splits(len(data)):
        for pattern in patterns:
            label = f"{name} {'single' if chunks is None else len(chunks)} {pattern}"
            sequence(script, label, op, mech, param, key, None if chunks is None else cut(data, chunks),
                     pattern, expect, fail_rv, data=data, final=final)


def equals(want: bytes):
    return lambda out: True if out == want else f"got {out.hex()[:80]}, want {want.hex()[:80]}"


def verifies(fn):
    def check(out):
        try:
            fn(out)
        except Exception as exc:      # InvalidSignature, ValueError
            return f"{type(exc).__name__} on {out.hex()[:80]}"
        return True
    return check


# --- keys ----------------------------------------------------------------------------
def secret(script, key_type, value):
    """A known-value test key for every use: readable (SENSITIVE false, EXTRACTABLE true), the
    only kind key separation lets hold ENCRYPT and DECRYPT with WRAP and UNWRAP (schema.py)."""
    return script.obj({C.CKA_CLASS: C.CKO_SECRET_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_VALUE: value,
                       C.CKA_TOKEN: b"\x00", C.CKA_ENCRYPT: True, C.CKA_DECRYPT: True, C.CKA_SIGN: True,
                       C.CKA_VERIFY: True, C.CKA_WRAP: True, C.CKA_UNWRAP: True,
                       C.CKA_SENSITIVE: b"\x00", C.CKA_EXTRACTABLE: True})


def big(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def rsa_keys(script, priv):
    n = priv.private_numbers()
    pub = n.public_numbers
    h_priv = script.obj({C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: C.CKK_RSA, C.CKA_TOKEN: b"\x00",
                         C.CKA_MODULUS: big(pub.n), C.CKA_PUBLIC_EXPONENT: big(pub.e),
                         C.CKA_PRIVATE_EXPONENT: big(n.d), C.CKA_PRIME_1: big(n.p), C.CKA_PRIME_2: big(n.q),
                         C.CKA_EXPONENT_1: big(n.dmp1), C.CKA_EXPONENT_2: big(n.dmq1),
                         C.CKA_COEFFICIENT: big(n.iqmp), C.CKA_SIGN: True, C.CKA_DECRYPT: True})
    h_pub = script.obj({C.CKA_CLASS: C.CKO_PUBLIC_KEY, C.CKA_KEY_TYPE: C.CKK_RSA, C.CKA_TOKEN: b"\x00",
                        C.CKA_MODULUS: big(pub.n), C.CKA_PUBLIC_EXPONENT: big(pub.e), C.CKA_VERIFY: True,
                        C.CKA_ENCRYPT: True})
    return h_priv, h_pub


def point_keys(script, key_type, params, value: bytes, point: bytes):
    octet = bytes([4, len(point)]) + point
    h_priv = script.obj({C.CKA_CLASS: C.CKO_PRIVATE_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_TOKEN: b"\x00",
                         C.CKA_EC_PARAMS: params, C.CKA_VALUE: value, C.CKA_SIGN: True})
    h_pub = script.obj({C.CKA_CLASS: C.CKO_PUBLIC_KEY, C.CKA_KEY_TYPE: key_type, C.CKA_TOKEN: b"\x00",
                        C.CKA_EC_PARAMS: params, C.CKA_EC_POINT: octet, C.CKA_VERIFY: True})
    return h_priv, h_pub


def flip(b: bytes, i: int = -1) -> bytes:
    b = bytearray(b)
    b[i] ^= 1
    return bytes(b)
