"""Privilege separation (issue 11): the deployment of scripts/privsep.sh, where the module
runs inside `p11-kit server` as the service user ferrohsm-svc, who alone can reach the token
directory (0700), and clients load p11-kit-client.so and reach it over a Unix socket that only
the group ferrohsm-clients may connect to (0660, in a 0750 directory).

The tests run as root (CI does), and root reads everything, so every attack runs as an
unprivileged user: ferrohsm-client (in the group) and ferrohsm-outsider (not in it), through
runuser with an emptied environment.  The client side needs neither our module nor its
Python: pkcs11-tool, openssl and /usr/bin/python3 only.  Each file attack is paired with a
control (root or the service user doing the same succeeds), so a failure is the permission
and not a missing file.  The deployment is started once for the module and stopped by the
fixture whatever the tests did."""

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO

SCRIPT = REPO / "scripts" / "privsep.sh"
CLIENT_LIB = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
SVC, GROUP, CLIENT, OUTSIDER = "ferrohsm-svc", "ferrohsm-clients", "ferrohsm-client", "ferrohsm-outsider"
LABEL, PIN, SO_PIN = "Privsep Token", "privsep-test-pin-4321", "privsep-test-so-87654321"
SYS_PY = "/usr/bin/python3"   # not the venv's: a client needs nothing of ours


@dataclass
class Deployment:
    root: Path
    address: str
    module: str

    @property
    def socket(self) -> str:
        return self.address.removeprefix("unix:path=")

    @property
    def tokens(self) -> Path:
        return self.root / "service" / "tokens"

    def work(self, user: str) -> Path:
        """A private working directory of `user` (output files of its commands)."""
        w = self.root / f"work-{user}"
        if not w.exists():
            w.mkdir(mode=0o700)
            u = pwd.getpwnam(user)
            os.chown(w, u.pw_uid, u.pw_gid)
        return w

    def run_as(self, user: str, *cmd, check=True, timeout=120) -> subprocess.CompletedProcess:
        env = ["env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"HOME={self.work(user)}",
               f"P11_KIT_SERVER_ADDRESS={self.address}", f"PIN={PIN}"]
        proc = subprocess.run(["runuser", "-u", user, "--", *env, *map(str, cmd)], cwd=self.work(user),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"as {user}: {cmd} failed ({proc.returncode}):\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def client_tool(self, *args, user=CLIENT, login=False, check=True) -> subprocess.CompletedProcess:
        """pkcs11-tool on p11-kit-client.so as `user`; the PIN comes from the environment."""
        pin = ["--login", "--pin", "env:PIN"] if login else []
        return self.run_as(user, "pkcs11-tool", "--module", CLIENT_LIB, "--token-label", LABEL, *pin,
                           *args, check=check)


def _script(action: str, root: Path, module: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "FERRO_PRIVSEP_MODULE": module,
           "FERRO_PRIVSEP_LABEL": LABEL, "FERRO_PRIVSEP_PIN": PIN, "FERRO_PRIVSEP_SO_PIN": SO_PIN}
    proc = subprocess.run(["bash", str(SCRIPT), action, str(root)], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"privsep.sh {action} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout.strip()


def _ensure_outsider() -> None:
    try:
        pwd.getpwnam(OUTSIDER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", OUTSIDER], check=True)
    groups = subprocess.run(["id", "-nG", OUTSIDER], capture_output=True, text=True, check=True).stdout
    assert GROUP not in groups.split(), f"{OUTSIDER} must not be in {GROUP}: {groups}"


@pytest.fixture(scope="module")
def deployment(module):
    if os.geteuid() != 0:
        pytest.fail("this test creates users and runs as them: run it as root (CI does)")
    for tool in ("p11-kit", "pkcs11-tool", "openssl", "runuser"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/setup.sh installs it)"
    assert Path(CLIENT_LIB).exists(), f"{CLIENT_LIB} missing (Debian package p11-kit-modules)"
    root = Path(tempfile.mkdtemp(prefix="ferrohsm-privsep-"))
    try:
        address = _script("start", root, module)
        assert _script("start", root, module) == address   # idempotent: same server, same address
        _ensure_outsider()
        yield Deployment(root, address, module)
    finally:
        _script("stop", root, module)
        shutil.rmtree(root, ignore_errors=True)


def test_layout_admits_only_the_service_user_to_the_files_and_the_group_to_the_socket(deployment):
    svc, clients = pwd.getpwnam(SVC), grp.getgrnam(GROUP)
    for path, mode, gid in [(deployment.root / "service", 0o700, svc.pw_gid),
                            (deployment.tokens, 0o700, svc.pw_gid),
                            (deployment.root / "run", 0o750, clients.gr_gid),
                            (Path(deployment.socket), 0o660, clients.gr_gid)]:
        st = path.lstat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, svc.pw_uid, gid), path
    assert CLIENT in clients.gr_mem and SVC not in clients.gr_mem, clients
    # the server, and so the module, runs as the service user
    pid = int((deployment.root / "server.pid").read_text())
    assert os.stat(f"/proc/{pid}").st_uid == svc.pw_uid


@pytest.mark.parametrize("key_type,mechanism", [("RSA:2048", "SHA256-RSA-PKCS"), ("EC:prime256v1", "ECDSA")])
def test_client_in_the_group_signs_through_the_socket(deployment, key_type, mechanism):
    """ferrohsm-client lists the token, logs in, generates a key pair and signs; openssl (as
    root, not the module) verifies.  p11-kit 0.24's RPC carries ECDSA only without a hash
    (no CKM_ECDSA_SHA256), so the client hashes for ECDSA."""
    listing = deployment.client_tool("--list-token-slots").stdout
    assert f"token label        : {LABEL}" in listing, listing
    key_id = "01" if key_type.startswith("RSA") else "02"
    deployment.client_tool("--keypairgen", "--key-type", key_type, "--id", key_id,
                           "--label", f"privsep-{key_id}", login=True)
    work = deployment.work(CLIENT)
    data, digest = work / f"data-{key_id}", work / f"digest-{key_id}"
    pub, sig = work / f"pub-{key_id}.der", work / f"sig-{key_id}"
    deployment.run_as(CLIENT, "sh", "-c", f"echo signed through p11-kit server > {data}")
    deployment.run_as(CLIENT, "openssl", "dgst", "-sha256", "-binary", "-out", digest, data)
    deployment.client_tool("--read-object", "--type", "pubkey", "--id", key_id, "-o", pub)
    signed = digest if mechanism == "ECDSA" else data
    deployment.client_tool("--sign", "--mechanism", mechanism, "--id", key_id, "--signature-format",
                           "openssl", "-i", signed, "-o", sig, login=True)
    if mechanism == "ECDSA":
        verify = ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", pub,
                  "-in", digest, "-sigfile", sig]
    else:
        verify = ["openssl", "dgst", "-sha256", "-verify", pub, "-keyform", "DER", "-signature", sig, data]
    out = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Verified" in out.stdout + out.stderr, out.stdout + out.stderr
    # a wrong PIN through the socket is the module's answer, passed on
    bad = deployment.run_as(CLIENT, "env", "PIN=not-the-pin", "pkcs11-tool", "--module", CLIENT_LIB,
                            "--token-label", LABEL, "--login", "--pin", "env:PIN", "--list-objects",
                            check=False)
    assert bad.returncode != 0 and "CKR_PIN_INCORRECT" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


# Run by /usr/bin/python3 as another user: every attempt on the token files, one JSON line
# {attempt: errno name or "ok"}.  argv[1]: JSON {"tokens": dir, "files": [paths]}.
ATTACKS = r"""
import errno, json, os, shutil, sys
arg = json.loads(sys.argv[1]); tokens, files = arg["tokens"], arg["files"]
service = os.path.dirname(tokens)
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
out = {"list tokens dir": attempt(lambda: os.listdir(tokens)),
       "list service dir": attempt(lambda: os.listdir(service)),
       "create in tokens dir": attempt(lambda: open(os.path.join(tokens, "planted"), "xb").close())}
for i, f in enumerate(files):
    out[f"read {i}"] = attempt(lambda: open(f, "rb").read(1))
    out[f"copy {i}"] = attempt(lambda: shutil.copyfile(f, os.path.join(os.environ["HOME"], f"copy-{i}")))
    out[f"write {i}"] = attempt(lambda: open(f, "r+b").close())
    out[f"stat {i}"] = attempt(lambda: os.stat(f))
    out[f"unlink {i}"] = attempt(lambda: os.unlink(f))
    out[f"rename {i}"] = attempt(lambda: os.rename(f, f + ".old"))
print(json.dumps(out))
"""


def _attack_files(deployment, user: str, files: list) -> dict:
    arg = json.dumps({"tokens": str(deployment.tokens), "files": [str(f) for f in files]})
    return json.loads(deployment.run_as(user, SYS_PY, "-c", ATTACKS, arg).stdout)


def test_client_cannot_read_copy_write_or_list_the_token_files(deployment):
    """The attacks of the at-rest findings start from a process that reads or writes the
    token files; ferrohsm-client signs (test above) but gets EACCES on every file operation on
    the token files, the config and the log: read, copy, open for writing, stat, unlink,
    rename, list, plant a file.  `cp` fails the same way."""
    deployment.client_tool("--list-objects")          # the server has opened the token
    files = sorted(p for p in (deployment.root / "service").rglob("*") if p.is_file())  # tokens, config, log
    assert any(p.suffix == ".sqlite" and p.stat().st_size > 0 for p in files), files
    before = {p: p.read_bytes() for p in files}      # control: root reads them
    got = _attack_files(deployment, CLIENT, files)
    assert got == {k: "EACCES" for k in got}, got
    cp = deployment.run_as(CLIENT, "cp", files[0], deployment.work(CLIENT) / "copy", check=False)
    assert cp.returncode != 0 and "Permission denied" in cp.stderr, cp.stderr
    assert not (deployment.work(CLIENT) / "copy").exists()
    assert {p: p.read_bytes() for p in files} == before
    assert not (deployment.tokens / "planted").exists()
    # control: the same program as the service user reads and lists (so EACCES above is the
    # permission, not a wrong path)
    svc = json.loads(deployment.run_as(SVC, SYS_PY, "-c",
                                       "import json, os, sys; a = json.loads(sys.argv[1]); "
                                       "print(json.dumps([len(open(f, 'rb').read()) for f in a['files']]"
                                       " + [len(os.listdir(a['tokens']))]))",
                                       json.dumps({"tokens": str(deployment.tokens),
                                                   "files": [str(f) for f in files]})).stdout)
    assert svc == [len(before[p]) for p in files] + [len(os.listdir(deployment.tokens))], svc


CONNECT = r"""
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc.errno)))
"""


def test_user_outside_the_group_cannot_connect(deployment):
    """ferrohsm-outsider (not in ferrohsm-clients) gets EACCES on connect(2) and no token
    through p11-kit-client.so; ferrohsm-client, with the same program, connects."""
    assert deployment.run_as(OUTSIDER, SYS_PY, "-c", CONNECT, deployment.socket).stdout.strip() == "EACCES"
    assert deployment.run_as(CLIENT, SYS_PY, "-c", CONNECT, deployment.socket).stdout.strip() == "connected"
    out = deployment.run_as(OUTSIDER, "pkcs11-tool", "--module", CLIENT_LIB, "--list-token-slots", check=False)
    assert out.returncode != 0 and LABEL not in out.stdout, out.stdout + out.stderr
    login = deployment.client_tool("--list-objects", user=OUTSIDER, login=True, check=False)
    assert login.returncode != 0 and LABEL not in login.stdout, login.stdout + login.stderr


HOLD = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print("connected", flush=True)
sys.stdin.read()
"""

PROBE = r"""
import errno, sys
for name in ("mem", "environ", "maps"):
    try:
        with open(f"/proc/{sys.argv[1]}/{name}", "rb") as f:
            f.read(1)
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode.get(exc.errno, str(exc.errno)))
"""



def test_client_cannot_read_the_service_process(deployment):
    """The process that loads the module (p11-kit-remote, forked per connection, running as
    ferrohsm-svc) holds the unsealed keys of a logged-in session; a client of the group cannot
    read its memory or environment (another uid: the kernel's ptrace access check)."""
    server = int((deployment.root / "server.pid").read_text())
    holder = subprocess.Popen(["runuser", "-u", CLIENT, "--", SYS_PY, "-c", HOLD, deployment.socket],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "connected"
        remote = None
        for _ in range(200):   # the server forks the child after accept(): bounded wait
            remote = next((int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                           and _ppid(p) == server), None)
            if remote:
                break
            time.sleep(0.05)
        assert remote, "no per-connection process appeared"
        assert os.stat(f"/proc/{remote}").st_uid == pwd.getpwnam(SVC).pw_uid
        got = deployment.run_as(CLIENT, SYS_PY, "-c", PROBE, remote).stdout.split("\n")
        assert [line for line in got if line] == ["mem EACCES", "environ EACCES", "maps EACCES"], got
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_the_socket_passes_every_call_so_the_group_is_trusted_as_a_client(deployment):
    """What privilege separation does not take away: a member of the group is a PKCS#11 client
    like any other.  The PIN still gates every private object, wrong PINs count toward the
    lockout, and C_InitToken reaches the module: one wrong SO PIN from ferrohsm-client, with
    no PIN known, is counted (CKR_PIN_INCORRECT, then CKF_SO_PIN_COUNT_LOW)."""
    init = deployment.run_as(CLIENT, "env", "SO=not-the-so-pin", "pkcs11-tool", "--module", CLIENT_LIB,
                             "--init-token", "--token-label", LABEL, "--label", "taken over",
                             "--so-pin", "env:SO", check=False)
    assert init.returncode != 0 and "CKR_PIN_INCORRECT" in init.stdout + init.stderr, init.stdout + init.stderr
    flags = deployment.client_tool("--list-token-slots").stdout
    assert "SO PIN count low" in flags and f"token label        : {LABEL}" in flags, flags
