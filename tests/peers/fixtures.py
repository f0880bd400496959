"""Session-scoped pytest fixtures that start the real test peers with the project's
own scripts (scripts/peers/*.sh) and stop them at the end of the session, also when
a test fails or the run is interrupted (fixture finalizer + atexit).  Every script
call has a deadline, and SIGTERM ends the session through its finalizers.  A fixture skips
with a reason only if the peer's programs are not installed; under CI=true that skip fails
(conftest.py).  tests/peers/test_cleanup.py checks that no peer process outlives a run."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "scripts" / "peers"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PG_BIN = "/usr/lib/postgresql/15/bin"


def missing(programs=(), files=(), modules=()) -> str | None:
    gone = [p for p in programs if shutil.which(p) is None]
    gone += [f for f in files if not os.path.exists(f)]
    gone += [f"python:{m}" for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(gone)} (scripts/setup.sh installs them)" if gone else None


class Peer:
    script: Path

    def __init__(self, directory: Path):
        self.dir = directory
        self.env = dict(os.environ, PYTHON=os.environ.get("PYTHON", _python()))
        self._registered = False

    def run(self, cmd: str, timeout: float = 60) -> str:
        r = subprocess.run(["bash", str(self.script), cmd, str(self.dir)], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"{self.script.name} {cmd}: {r.stderr.strip()}")
        return r.stdout

    def start(self) -> str:
        if not self._registered:  # before the start: a start that fails half-way is stopped too
            atexit.register(self.stop)
            _terminate_gracefully()
            self._registered = True
        return self.run("start")

    def stop(self) -> None:
        try:
            self.run("stop", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"peer stop: {e}")


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate_gracefully() -> None:
    """SIGTERM (an outer timeout, CI cancelling the job) would end the Python process at once,
    with no fixture finalizer and no atexit: turn it into KeyboardInterrupt, so pytest tears
    the session down and the peers stop."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


class TpmPeer(Peer):
    script = PEERS / "tpm.sh"

    def start(self) -> str:
        self.tcti = super().start().strip().splitlines()[-1]
        return self.tcti

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        return int((self.dir / "swtpm.pid").read_text())

    def tool(self, *args: str, timeout: float = 10) -> str:
        """A tpm2-tools command against this TPM."""
        r = subprocess.run([args[0], "-T", self.tcti, *args[1:]], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def dictionary_attack(self, max_tries: int, recovery: int) -> None:
        self.tool("tpm2_dictionarylockout", "--setup-parameters", f"--max-tries={max_tries}",
                  f"--recovery-time={recovery}", "--lockout-recovery-time=0")

    def clear_lockout(self) -> None:
        self.tool("tpm2_dictionarylockout", "--clear-lockout")


class PcscPeer(Peer):
    script = PEERS / "pcsc.sh"

    def start(self) -> str:
        out = super().start()
        vals = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.socket, self.reader = vals["PCSCLITE_CSOCK_NAME"], vals["READER"]
        return out

    def bridge_pid(self) -> int:
        return int((self.dir / "bridge.pid").read_text())

    def pcscd_restart(self): self.run("pcscd-restart")
    def card_out(self): self.run("card-out")
    def card_in(self): self.run("card-in")
    def card_stop(self): self.run("card-stop")
    def card_start(self): self.run("card-start")


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory):
    why = missing(("swtpm", "tpm2_getcap", "tpm2_shutdown", "tpm2_dictionarylockout"),
                  modules=("tpm2_pytss",))
    if why:
        pytest.skip(f"swtpm peer: {why}")
    peer = TpmPeer(tmp_path_factory.mktemp("swtpm"))
    try:
        peer.start()
        yield peer
    finally:
        _resume(peer.dir / "swtpm.pid")
        peer.stop()


@pytest.fixture(scope="session")
def pcsc(tmp_path_factory):
    why = missing(("pcscd", "systemd-socket-activate", "opensc-tool"), (VPCD_DRIVER,),
                  ("smartcard", "jcecard"))
    if why:
        pytest.skip(f"pcscd+vpcd+jcecard peer: {why}")
    peer = PcscPeer(tmp_path_factory.mktemp("pcsc"))
    try:
        peer.start()
        # libpcsclite reads the socket name once per process: set it before any PC/SC call
        os.environ["PCSCLITE_CSOCK_NAME"] = peer.socket
        yield peer
    finally:
        _resume(peer.dir / "bridge.pid")
        peer.stop()


class PostgresPeer(Peer):
    """A private PostgreSQL server; `dsn` reaches database ferrohsm as role ferrohsm
    (CREATEDB: `database()` makes a fresh, empty database for one test)."""
    script = PEERS / "postgres.sh"

    def start(self) -> str:
        self.dsn = super().start().strip().splitlines()[-1]
        return self.dsn

    @property
    def pid(self) -> int:
        return int((self.dir / "pg" / "data" / "postmaster.pid").read_text().split()[0])

    def restart(self) -> None:
        self.stop()
        self.start()

    def database(self) -> str:
        """The DSN of a new empty database (the store creates its tables on first use)."""
        import psycopg
        name = f"ferro_{os.urandom(6).hex()}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn.replace("dbname=ferrohsm", f"dbname={name}")


def _postgres_peer():
    why = missing(files=(f"{PG_BIN}/initdb", f"{PG_BIN}/pg_ctl", f"{PG_BIN}/postgres"),
                  modules=("psycopg",))
    if why:
        pytest.skip(f"PostgreSQL peer: {why}")
    # not under pytest's base temp: the server runs as user ferrohsm-pg, which must be able
    # to reach its directory, and /tmp/pytest-of-root is 0700
    peer = PostgresPeer(Path(tempfile.mkdtemp(prefix="ferrohsm-pg-")))
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()
        atexit.unregister(peer.stop)
        shutil.rmtree(peer.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """The PostgreSQL server the tests share (each on a token name or database of its own)."""
    yield from _postgres_peer()


@pytest.fixture
def postgres_private():
    """A PostgreSQL server for one test, which may stop and start it."""
    yield from _postgres_peer()


def _resume(pidfile: Path) -> None:
    """A test that froze a peer (SIGSTOP) and failed must not leave it frozen."""
    try:
        os.kill(int(pidfile.read_text()), signal.SIGCONT)
    except (OSError, ValueError):
        pass


class SoftHsmPeer:
    """A private SoftHSM2 token directory and config in tmp (no system config touched):
    one initialized token, its user PIN in a file (the backend's PIN source)."""
    module = "/usr/lib/softhsm/libsofthsm2.so"
    label, pin, so_pin = "ferro-backend", "1234", "12345678"

    def __init__(self, directory: Path):
        (directory / "tokens").mkdir()
        self.conf = directory / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n")
        self.pin_file = directory / "user.pin"
        self.pin_file.write_text(self.pin)
        self.pin_file.chmod(0o600)          # the backend refuses a PIN source others can read
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", self.label,
                        "--pin", self.pin, "--so-pin", self.so_pin],
                       env=dict(os.environ, SOFTHSM2_CONF=str(self.conf)), check=True,
                       capture_output=True, timeout=30)

    def settings(self) -> str:
        """The [backends.NAME] body for FerroHSM's config."""
        return (f'type = "softhsm"\nmodule = "{self.module}"\ntoken_label = "{self.label}"\n'
                f'pin = "file:{self.pin_file}"\nconf = "{self.conf}"\n')


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory):
    why = missing(("softhsm2-util",), (SoftHsmPeer.module,), ("pkcs11",))
    if why:
        pytest.skip(f"SoftHSM2 peer: {why}")
    peer = SoftHsmPeer(tmp_path_factory.mktemp("softhsm"))
    # SoftHSM2 reads SOFTHSM2_CONF once per process, at its first C_Initialize
    os.environ["SOFTHSM2_CONF"] = str(peer.conf)
    return peer


def installed_module() -> Path:
    """The libferrohsm-pkcs11.so pip installed for this interpreter (the source tree has none)."""
    import sysconfig
    return Path(sysconfig.get_paths()["platlib"]) / "pkcs11_shim" / "libferrohsm-pkcs11.so"


class FerroPeer:
    """A second FerroHSM as a remote PKCS#11 module: its own token directory and config,
    one initialized token, and its own copy of the built module in tmp (the same file
    from another directory is another copy, so it reads this FERROHSM_CONF at its own
    C_Initialize whatever other tests of the process loaded)."""
    label, pin, so_pin = "ferro-remote", "remote-1234", "remote-so-1234"

    def __init__(self, directory: Path):
        from provider import constants as C
        from provider.config import Config
        from provider.library import Library
        (directory / "lib").mkdir()
        self.module = shutil.copy(installed_module(), directory / "lib" / "libferrohsm-pkcs11.so")
        self.conf = directory / "remote.conf"
        self.conf.write_text(f'[tokens]\ndirectory = "{directory / "tokens"}"\n'
                             f'[log]\nlevel = "WARNING"\nfile = "{directory / "remote.log"}"\n')
        self.pin_file = directory / "remote.pin"
        self.pin_file.write_text(self.pin)
        self.pin_file.chmod(0o600)
        lib = Library(Config.parse(self.conf.read_text(), str(self.conf)))
        try:
            slot = lib.free_slot
            lib.init_token(slot, self.so_pin.encode(), self.label.encode().ljust(32, b" "))
            s = lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
            lib.login(s, C.CKU_SO, self.so_pin.encode())
            lib.init_pin(s, self.pin.encode())
            lib.close_session(s)
        finally:
            lib.finalize()

    def settings(self) -> str:
        """The [backends.NAME] body for the local FerroHSM's config."""
        return (f'type = "pkcs11"\nmodule = "{self.module}"\ntoken_label = "{self.label}"\n'
                f'pin = "file:{self.pin_file}"\nenv = {{ FERROHSM_CONF = "{self.conf}" }}\n')


@pytest.fixture(scope="session")
def ferro_remote(tmp_path_factory):
    why = missing(files=(str(installed_module()),), modules=("pkcs11",))
    if why:
        pytest.skip(f"FerroHSM remote peer: {why}")
    return FerroPeer(tmp_path_factory.mktemp("ferro-remote"))
