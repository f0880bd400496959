"""End-to-end fixtures: the BUILT and INSTALLED libferrohsm-pkcs11.so (from
`pip install .`, see scripts/setup.sh), driven by real clients.

Every test gets its own token directory and FERROHSM_CONF. Clients run as
subprocesses with an environment reduced to what they need (no PYTHONPATH), so
the module has to find its Python side by itself.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from provider import constants as C

SO_PIN = "12345678"
USER_PIN = "123456"
LIBNAME = "libferrohsm-pkcs11.so"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def installed_module() -> Path:
    """The library pip installed for this interpreter (not the source tree's)."""
    return Path(sysconfig.get_paths()["platlib"]) / "pkcs11_shim" / LIBNAME


def _stale() -> list[str]:
    """Source files whose installed copy differs (or is missing)."""
    site = Path(sysconfig.get_paths()["platlib"])
    return [str(src.relative_to(REPO)) for package in ("provider", "pkcs11_shim")
            for src in sorted((REPO / package).rglob("*.py"))
            if not (site / src.relative_to(REPO)).exists()
            or (site / src.relative_to(REPO)).read_bytes() != src.read_bytes()]


@pytest.fixture(scope="session")
def module() -> str:
    """The installed module, reinstalled first if the source tree moved on (set
    FERROHSM_E2E_NO_REINSTALL=1 to test the installed one as it is)."""
    path = installed_module()
    if not os.environ.get("FERROHSM_E2E_NO_REINSTALL") and (not path.exists() or _stale()):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        str(REPO)], check=True, capture_output=True, timeout=600)
    if not path.exists():
        pytest.fail(f"{path} is missing: run `pip install .` (scripts/setup.sh) first")
    return str(path)


def write_conf(directory: Path, **pin) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "ferrohsm.conf"
    lines = [f'[tokens]\ndirectory = "{directory / "tokens"}"\n', '[log]\nlevel = "ERROR"\n']
    if pin:
        lines.append("[pin]\n" + "".join(f"{k} = {v}\n" for k, v in pin.items()))
    conf.write_text("".join(lines))
    return conf


def clean_env(conf: Path) -> dict:
    """What a client process gets: FERROHSM_CONF and little else."""
    env = {"FERROHSM_CONF": str(conf), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


class Hsm:
    """One token directory, and helpers to drive the module in it."""

    def __init__(self, module: str, root: Path, **pin):
        self.module = module
        self.root = root
        self.conf = write_conf(root, **pin)
        self.env = clean_env(self.conf)

    def run(self, *args, check=True, timeout=120, input=None, env=None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in args], env=env or self.env, capture_output=True,
                              timeout=timeout, input=input, cwd=self.root)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}):\nstdout: {proc.stdout.decode()}\n"
                                 f"stderr: {proc.stderr.decode()}")
        return proc

    def tool(self, *args, check=True, **kw) -> subprocess.CompletedProcess:
        return self.run("pkcs11-tool", "--module", self.module, *args, check=check, **kw)

    def user(self, *args, check=True, **kw) -> subprocess.CompletedProcess:
        return self.tool("--token-label", "e2e", "--login", "--pin", USER_PIN, *args, check=check, **kw)

    def init_token(self, label: str = "e2e") -> None:
        self.tool("--init-token", "--slot", "0", "--label", label, "--so-pin", SO_PIN)
        self.tool("--token-label", label, "--login", "--login-type", "so", "--so-pin", SO_PIN,
                  "--init-pin", "--pin", USER_PIN)

    def python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Run `code` in this venv's Python (a Python host process), no PYTHONPATH."""
        return self.run(sys.executable, "-c", code, **kw)


@pytest.fixture
def hsm(module, tmp_path) -> Hsm:
    if not shutil.which("pkcs11-tool"):
        pytest.skip("pkcs11-tool (opensc) is not installed")
    return Hsm(module, tmp_path)


@pytest.fixture
def token(hsm) -> Hsm:
    hsm.init_token()
    return hsm


def c_header() -> str:
    """A C header for test clients: the shim's own declarations plus every CK*_
    constant of provider.constants."""
    from pkcs11_shim.cdefs import header
    defines = [f"#define {name} ((CK_ULONG)0x{value:x}UL)" for name, value in vars(C).items()
               if name.startswith("CK") and "_" in name and isinstance(value, int)]
    return ("#ifndef FERRO_PKCS11_H\n#define FERRO_PKCS11_H\n" + header()
            + "#define CK_TRUE 1\n#define CK_FALSE 0\n" + "\n".join(defines) + "\n#endif\n")


@pytest.fixture(scope="session")
def c_build(tmp_path_factory):
    """compile(name) -> path of tests/e2e/c/<name>.c built with gcc."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("cbuild")
    (out / "ferro_pkcs11.h").write_text(c_header())

    def compile(name: str) -> Path:
        exe = out / name
        if not exe.exists():
            subprocess.run(["gcc", "-std=gnu11", "-Wall", "-O1", "-I", str(out), "-o", str(exe),
                            str(HERE / "c" / f"{name}.c"), "-ldl", "-lpthread"], check=True, timeout=120)
        return exe
    return compile
