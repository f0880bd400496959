"""Fetch the upstream test suite of the installed python-pkcs11 for the conformance runner
(conformance/test_python_pkcs11.py), once, at set-up time: nothing is built.

The sdist of exactly the installed version is looked up in PyPI's simple API (PEP 691 JSON),
downloaded, checked against the sha256 that API lists, and only its tests/ is unpacked to
.cache/python-pkcs11-<version>/tests (the sdist's pkcs11/ source must not shadow the
installed package). Standard library only. Run by scripts/setup.sh with the venv's python;
prints one line and exits 1 if the registry cannot be reached or the file does not match.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "python-pkcs11"


def index() -> str:
    """PyPI's simple API, or another index with the same JSON (FERROHSM_PYPI_SIMPLE)."""
    return os.environ.get("FERROHSM_PYPI_SIMPLE", "https://pypi.org/simple/")

TIMEOUT = 60


def upstream_dir(ver: str) -> Path:
    """Where the unpacked tests of python-pkcs11 `ver` live (the runner reads it from here)."""
    return ROOT / ".cache" / f"{PROJECT}-{ver}"


def _get(url: str, accept: str = "*/*") -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        return resp.read()


def _sdist(ver: str) -> tuple:
    """(url, sha256) of the sdist of `ver`, from the simple API."""
    page = json.loads(_get(f"{index().rstrip('/')}/{PROJECT}/",
                           "application/vnd.pypi.simple.v1+json"))
    names = {f"python_pkcs11-{ver}.tar.gz", f"python-pkcs11-{ver}.tar.gz"}
    for f in page["files"]:
        if f["filename"] in names and "sha256" in f.get("hashes", {}):
            return f["url"], f["hashes"]["sha256"]
    raise LookupError(f"{PROJECT} {ver}: no sdist with a sha256 in {index()}")


def fetch(ver: str, out: Path) -> Path:
    """Unpack the sdist's tests/ of `ver` to out/tests (nothing if already there)."""
    if (out / "tests" / "__init__.py").exists():
        return out
    url, sha256 = _sdist(ver)
    blob = _get(url)
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise ValueError(f"{url}: sha256 {got} is not the registry's {sha256}")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        top = f"{tar.getnames()[0].split('/')[0]}/tests/"
        members = [m for m in tar.getmembers() if m.name.startswith(top)]
        for m in members:
            m.name = m.name[len(top) - len("tests/"):]
            # only plain files and directories inside tests/ (what filter="data"
            # would ensure; Debian's Python 3.11.2 predates that argument)
            if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts:
                raise ValueError(f"{url}: unexpected member {m.name!r} in the sdist")
            m.mode &= 0o755
        tar.extractall(tmp, members=members)
    if not (tmp / "tests" / "__init__.py").exists():
        raise LookupError(f"{url}: no tests/ package in the sdist")
    tmp.rename(out)
    return out


def main(out: Path | None = None) -> int:
    try:
        ver = version(PROJECT)
    except PackageNotFoundError:
        print(f"fetch_upstream_tests: {PROJECT} is not installed in {sys.prefix}", file=sys.stderr)
        return 1
    try:
        out = fetch(ver, out or upstream_dir(ver))
    except (urllib.error.URLError, OSError) as e:
        print(f"fetch_upstream_tests: cannot download the {PROJECT} {ver} sdist from {index()} "
              f"({getattr(e, 'reason', e)}): its upstream conformance tests cannot run",
              file=sys.stderr)
        return 1
    except (LookupError, ValueError, KeyError, tarfile.TarError) as e:
        print(f"fetch_upstream_tests: {e}", file=sys.stderr)
        return 1
    print(f"==> {PROJECT} {ver} upstream tests: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
