"""The module in Python hosts (issue 9, "Python hosts" and robustness item 5): the
embedded engine shares the host's interpreter, sys.modules and garbage collector,
while the host treats the .so as a library it may load twice, dlclose, reload,
or load holding its own lock. Every scenario runs in its own subprocess, so a
crash or a hang is a failed test, not a dead pytest."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import USER_PIN

HERE = Path(__file__).resolve().parent
DEBIAN_PYTHON = "/usr/bin/python3"

PRELUDE = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from pyhost_client import *
PIN = {USER_PIN.encode()!r}
"""


def run(token, code: str, *args, python=sys.executable, timeout=120, native="1") -> subprocess.CompletedProcess:
    """`native`: FERROHSM_NATIVE, "0" keeps every operation in the engine."""
    proc = subprocess.run([python, "-c", PRELUDE + code, *map(str, args)], cwd=token.root,
                          env={**token.env, "FERROHSM_NATIVE": native}, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout: {proc.stdout.decode()}\n"
                                  f"stderr: {proc.stderr.decode()}")
    return proc


def copy_of(module: str, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return shutil.copy(module, directory / Path(module).name)


CYCLES = """
original, copies = sys.argv[1], sys.argv[2:]
for copy in copies:                       # three cycles
    first = Module(original)
    first.use(PIN)
    first.finalize()
    first.unload()
    other = Module(copy)                  # the same file from another directory
    other.use(PIN)
    other.finalize()
    other.unload()
again = Module(original)                  # loaded again after the unloads
session, aes, ec = again.use(PIN)
assert len(again.encrypt(session, b"after reloading")) == 15 + 16
again.finalize()
again.unload()
walk()
print("walked")
"""


BOTH_PATHS = pytest.mark.parametrize("native", ["1", "0"], ids=["native", "engine"])


@BOTH_PATHS
def test_load_use_unload_copy_reload_three_cycles(token, tmp_path, native):
    copies = [copy_of(token.module, tmp_path / f"copy{i}") for i in range(3)]
    assert "walked" in run(token, CYCLES, token.module, *copies, native=native).stdout.decode()


TWO_COPIES = """
a, b = Module(sys.argv[1]), Module(sys.argv[2])
sa, aes_a, ec_a = a.use(PIN)
sb, aes_b, ec_b = b.use(PIN)
b.finalize()                              # finalises b only
assert len(a.encrypt(sa, b"a still works")) == 13 + 16
assert len(a.sign(sa, b"\\x02" * 32)) == 64
assert b.C_GetSlotList(1, None, byref(c_ulong())) == 0x190      # b: CKR_CRYPTOKI_NOT_INITIALIZED
b.unload()
a.gcm_init(sa, aes_a)
assert len(a.encrypt(sa, b"after b unloaded")) == 16 + 16
a.finalize()
check(a.C_Initialize(None), "C_Initialize again")
a.finalize()
a.unload()
walk()
print("walked")
"""


@BOTH_PATHS
def test_two_copies_are_two_libraries(token, tmp_path, native):
    copy = copy_of(token.module, tmp_path / "copy")
    assert "walked" in run(token, TWO_COPIES, token.module, copy, native=native).stdout.decode()


def test_sys_modules_and_gc_walk_after_unload(token):
    code = """
m = Module(sys.argv[1])
m.use(PIN)
m.finalize()
m.unload()
del m
assert "_ferrohsm_pkcs11" not in sys.modules
walk()
print("walked")
"""
    assert "walked" in run(token, code, token.module).stdout.decode()


LOCKED_LOAD = """
import gc, threading
lock = threading.Lock()
collected = []

class Pending:                            # a host object whose finaliser takes the host's lock
    def __del__(self):
        with lock:
            collected.append(1)

cycle = Pending()
cycle.me = cycle
del cycle
with lock:
    LOAD
    bookkeeping = [{"n": i} for i in range(50)]   # what a host does next, lock still held
assert gc.isenabled()                     # the host's setting, restored
gc.collect()
assert collected == [1], collected
print("loaded", rv)
"""


def test_load_under_held_lock_with_cycle_pending(token):
    code = LOCKED_LOAD.replace("LOAD", "m = Module(sys.argv[1]); rv = m.C_Initialize(None)")
    assert "loaded 0" in run(token, code, token.module, timeout=60).stdout.decode()


def test_start_up_keeps_a_host_s_disabled_collector_disabled(token):
    code = """
import gc
gc.disable()
m = Module(sys.argv[1])
check(m.C_Initialize(None), "C_Initialize")
print("enabled", gc.isenabled())
"""
    assert "enabled False" in run(token, code, token.module).stdout.decode()


def test_pykcs11_load_under_its_lock_with_cycle_pending(token):
    code = """
import gc
import PyKCS11
stale = PyKCS11.PyKCS11Lib()              # its __del__ unloads, which takes PyKCS11Lib._lock
stale.me = stale
del stale
lib = PyKCS11.PyKCS11Lib().load(sys.argv[1])
print("loaded", lib.getTokenInfo(lib.getSlotList(tokenPresent=True)[0]).label.strip())
"""
    assert "loaded e2e" in run(token, code, token.module, timeout=60).stdout.decode()


PYKCS11_CYCLES = """
import PyKCS11
from PyKCS11 import CKA_CLASS, CKA_TOKEN, CKA_VALUE_LEN, CKA_ENCRYPT, CKA_KEY_TYPE, CKO_SECRET_KEY, CKK_AES
from PyKCS11 import CKF_RW_SESSION, CKF_SERIAL_SESSION, CKM_AES_KEY_GEN, Mechanism
def use(path):
    lib = PyKCS11.PyKCS11Lib().load(path)
    session = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_RW_SESSION | CKF_SERIAL_SESSION)
    session.login(PIN.decode())
    key = session.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, False),
                               (CKA_VALUE_LEN, 32), (CKA_ENCRYPT, True)], Mechanism(CKM_AES_KEY_GEN, None))
    gcm = PyKCS11.AES_GCM_Mechanism(bytes(12), b"", 128)
    assert len(session.encrypt(key, b"pykcs11 data", gcm)) == 12 + 16
    return lib, session
for copy in sys.argv[2:]:
    lib, session = use(sys.argv[1])
    lib.unload()                          # PyKCS11's unload: C_Finalize and dlclose
    del lib, session
    lib, session = use(copy)
    other, other_session = use(sys.argv[1])       # two copies at once
    lib.unload()
    assert other.getTokenInfo(other.getSlotList(tokenPresent=True)[0]).label.strip() == "e2e"
    other.unload()
    del lib, session, other, other_session
walk()
print("walked")
"""


def test_pykcs11_load_unload_copies(token, tmp_path):
    copies = [copy_of(token.module, tmp_path / f"copy{i}") for i in range(3)]
    assert "walked" in run(token, PYKCS11_CYCLES, token.module, *copies).stdout.decode()


# --- robustness item 5: a Debian python host with Debian's own cryptography -------
DEBIAN_OWN_PACKAGES = """
m = Module(sys.argv[1])                   # nothing imported yet: the module brings its own packages
check(m.C_Initialize(None), "C_Initialize")
mechs = m.mechanisms(m.slot())
for mech in (CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, CKM_HKDF_DERIVE, CKM_AES_GCM, CKM_ECDSA):
    assert mech in mechs, hex(mech)
m.finalize()
session, aes, ec = m.use(PIN)
import cryptography, _cffi_backend
print("versions", cryptography.__version__, _cffi_backend.__version__, cryptography.__file__)
"""

DEBIAN_IMPORTED_FIRST = """
import cryptography.hazmat.primitives.ciphers     # Debian's cryptography and cffi backend
m = Module(sys.argv[1])
print("rv", m.C_Initialize(None), m.C_GetSlotList(1, None, byref(c_ulong())))
"""


def _site_versions() -> dict:
    import _cffi_backend
    import cryptography
    return {"cryptography": cryptography.__version__, "cffi": _cffi_backend.__version__,
            "site": str(Path(cryptography.__file__).parent.parent)}


def test_debian_python_runs_on_the_module_s_own_packages(token):
    want = _site_versions()
    out = run(token, DEBIAN_OWN_PACKAGES, token.module, python=DEBIAN_PYTHON).stdout.decode()
    _, crypto, cffi, where = out.strip().splitlines()[-1].split()
    assert (crypto, cffi) == (want["cryptography"], want["cffi"])
    assert where.startswith(want["site"])


def test_debian_python_with_its_cryptography_imported_is_refused_in_one_line(token):
    want = _site_versions()
    debian = subprocess.run([DEBIAN_PYTHON, "-c", "import cryptography; print(cryptography.__version__)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert debian != want["cryptography"], "the test needs Debian's python3-cryptography to differ"
    proc = run(token, DEBIAN_IMPORTED_FIRST, token.module, python=DEBIAN_PYTHON)
    assert proc.stdout.decode().split() == ["rv", "5", "5"]        # CKR_GENERAL_ERROR, and it stays so
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ferrohsm: cannot start:")
    assert f"cryptography {debian}" in lines[0] and f"cryptography {want['cryptography']}" in lines[0]
    assert f"cffi {want['cffi']}" in lines[0]


@pytest.fixture(autouse=True)
def _debian_python_present(request):
    if "debian" in request.node.name and not Path(DEBIAN_PYTHON).exists():
        pytest.fail(f"{DEBIAN_PYTHON} is missing: scripts/setup.sh installs python3-cryptography")


def test_c_host_runs_on_the_module_s_own_packages(token):
    """A C host: the embedded interpreter's own site-packages (here with older
    cryptography and cffi) comes after the install's. LD_DEBUG=files names every
    shared object loaded, the two dependencies' extensions among them."""
    site = str(Path(token.module).parent.parent)
    proc = token.run("pkcs11-tool", "--module", token.module, "-L", env={**token.env, "LD_DEBUG": "files"})
    loaded = [line.split("file=", 1)[1].split()[0] for line in proc.stderr.decode().splitlines()
              if "file=" in line and "dynamically loaded by" in line]
    extensions = [path for path in loaded if "_cffi_backend" in path or "_rust.abi3" in path]
    assert len(extensions) == 2, extensions
    assert all(path.startswith(site + "/") for path in extensions), extensions
