"""The native AES-GCM fast path (native/) against the Python engine, through the
C ABI: the same C programs run once on each path (FERROHSM_NATIVE=0 keeps every
operation in Python) and must print the same lines - NIST vectors, buffer rules,
invalidation, message-based AEAD - with no failures on either."""

import re
from pathlib import Path

import pytest

from .conftest import USER_PIN

DATA = Path(__file__).resolve().parent.parent / "data"


def nist_vectors() -> str:
    """tests/data/*.rsp (NIST CAVP, see their headers) as the C programs' input lines."""
    lines = []
    for name, kind in (("gcmEncryptExtIV256.rsp", "E"), ("gcmDecrypt256.rsp", "D")):
        for case in re.split(r"\n(?=Count = )", (DATA / name).read_text())[1:]:
            f = dict(re.findall(r"^(\w+) = ?(.*)$", case, re.M))
            f = {k: v.strip() or "-" for k, v in f.items()}
            if kind == "E":
                lines.append(f"E {f['Key']} {f['IV']} {f['AAD']} {f['PT']} {f['CT']} {f['Tag']}")
            else:
                result = "FAIL" if "FAIL" in case else f["PT"]
                lines.append(f"D {f['Key']} {f['IV']} {f['AAD']} {f['CT']} {f['Tag']} {result}")
    return "\n".join(lines) + "\n"


def run_both(token, exe, *args) -> dict:
    """{native: bool -> (report lines, debug log)} of one C program run on each path."""
    out = {}
    for native in (True, False):
        log = token.root / f"native-{native}.log"
        conf = token.root / f"native-{native}.conf"
        conf.write_text(token.conf.read_text().replace('level = "ERROR"', f'level = "DEBUG"\nfile = "{log}"'))
        env = {**token.env, "FERROHSM_CONF": str(conf), "FERROHSM_NATIVE": "1" if native else "0"}
        proc = token.run("env", "-i", *[f"{k}={v}" for k, v in env.items()], exe, token.module, "e2e",
                         USER_PIN, *args, check=False, timeout=300)
        report = proc.stdout.decode() + proc.stderr.decode()
        assert "FAIL" not in report and proc.returncode == 0, f"native={native}:\n{report}"
        lines = [x for x in report.splitlines() if not x.startswith("rate ")]
        out[native] = (lines, log.read_text() if log.exists() else "")
    return out


@pytest.fixture
def vectors(tmp_path) -> Path:
    path = tmp_path / "vectors.txt"
    path.write_text(nist_vectors())
    return path


def test_gcm_fast_path_matches_engine(c_build, token, vectors):
    both = run_both(token, c_build("gcm_fast_check"), vectors)
    assert both[True][0] == both[False][0]
    assert any(line.startswith("out single ") for line in both[True][0])
    # the fast path is really taken (the engine logs each hand-over), and only when enabled
    assert "encrypt handed to the native fast path" in both[True][1]
    assert "sign handed to the native fast path" in both[True][1]
    assert "native fast path" not in both[False][1]


def test_message_aead_matches_engine(c_build, token):
    both = run_both(token, c_build("msg_check"))
    assert both[True][0] == both[False][0]
    assert any(line.startswith("out message ") for line in both[True][0])
