"""scripts/fetch_upstream_tests.py, which scripts/setup.sh runs so that the python-pkcs11
runner never downloads at test time: against a local index with PyPI's simple-API JSON.
It unpacks only the sdist's tests/, refuses a file whose sha256 is not the index's, and says
in one line when the index cannot be reached."""

import hashlib
import importlib.util
import io
import json
import subprocess
import tarfile
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from conformance.common import REPO

_spec = importlib.util.spec_from_file_location("fetch_upstream_tests",
                                               REPO / "scripts" / "fetch_upstream_tests.py")
fetch_upstream = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_upstream)
VER = "9.9.9"


def _sdist() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in ((f"python_pkcs11-{VER}/tests/__init__.py", b"# upstream\n"),
                           (f"python_pkcs11-{VER}/tests/test_x.py", b"def test_x(): pass\n"),
                           (f"python_pkcs11-{VER}/pkcs11/__init__.py", b"raise ImportError\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local simple index; returns a function (sha256 to list) -> None."""
    root = tmp_path / "www"
    (root / "simple" / "python-pkcs11").mkdir(parents=True)
    blob = _sdist()
    (root / f"python_pkcs11-{VER}.tar.gz").write_bytes(blob)
    server = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("FERROHSM_PYPI_SIMPLE", f"{base}/simple/")

    def listing(sha256=hashlib.sha256(blob).hexdigest()):
        page = {"files": [{"filename": f"python_pkcs11-{VER}.tar.gz", "hashes": {"sha256": sha256},
                           "url": f"{base}/python_pkcs11-{VER}.tar.gz"}]}
        (root / "simple" / "python-pkcs11" / "index.html").write_text(json.dumps(page))
    yield listing
    server.shutdown()
    server.server_close()


def test_unpacks_tests_only(index, tmp_path):
    index()
    out = fetch_upstream.fetch(VER, tmp_path / "out")
    assert sorted(p.name for p in (out / "tests").iterdir()) == ["__init__.py", "test_x.py"]
    assert not (out / "pkcs11").exists()


def test_refuses_a_file_whose_sha256_differs(index, tmp_path):
    index("0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        fetch_upstream.fetch(VER, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreachable_index_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FERROHSM_PYPI_SIMPLE", "http://127.0.0.1:9/simple/")
    assert fetch_upstream.main(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download the python-pkcs11" in err, err


def test_runner_reads_the_fetched_directory(index, tmp_path, monkeypatch):
    """The runner copies its upstream tests from where setup.sh put them and starts no
    process to download them."""
    from conformance import test_python_pkcs11 as runner
    assert runner.upstream_dir("1.0") == fetch_upstream.upstream_dir("1.0")
    index()
    fetched = fetch_upstream.fetch(VER, tmp_path / "fetched")
    monkeypatch.setattr(runner, "version", lambda name: VER)
    monkeypatch.setattr(runner, "upstream_dir", lambda ver: fetched)
    monkeypatch.setattr(subprocess, "run", None)              # any download would fail
    root = runner._upstream_tests(tmp_path / "run")
    assert (root / "tests" / "test_x.py").read_text() == "def test_x(): pass\n"
