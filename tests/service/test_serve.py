"""Step 7: `ferrohsm serve` as a real process over real TLS 1.3: a throw-away CA and
server certificate made here with `cryptography`, the token unlocked at start from an
env: PIN source, the JWT secret from the environment. TLS 1.2 is refused, mTLS asks for
a client certificate from the configured CA, a request runs end to end (create, encrypt,
decrypt, the use in the audit chain), and SIGTERM ends the process cleanly. Also the
start-up refusals: plain HTTP off loopback, no TLS files, no secret."""

import datetime
import hashlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import OKPAlgorithm

from provider.config import Config
from tests.unit.conftest import init_token, make_library

from .conftest import SECRET, bearer, free_port

ROOT = Path(__file__).resolve().parents[2]
PIN = "user-1234"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer_name, issuer_key, key, ca=False, server=False, client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                                          critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None):
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", _name("test CA"), ca_key, ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("127.0.0.1", ca.subject, ca_key, srv_key, server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("client", ca.subject, ca_key, cli_key, client=True)
    return {"ca": _write(d / "ca.pem", ca), "cert": _write(d / "server.pem", srv),
            "key": _write(d / "server.key", key=srv_key), "client": _write(d / "client.pem", cli),
            "client_key": _write(d / "client.key", key=cli_key)}


def _setup(tmp_path, server: str) -> dict:
    lib = make_library(tmp_path)
    init_token(lib, b"svc")
    lib.finalize()
    conf = tmp_path / "ferrohsm.conf"
    conf.write_text(conf.read_text() + f"\n[server]\npin = \"env:TEST_PIN\"\ntoken = \"svc\"\n{server}\n")
    Config.parse(conf.read_text(), str(conf))            # the test's own configuration is valid
    return {**os.environ, "FERROHSM_CONF": str(conf), "TEST_PIN": PIN, "FERROHSM_JWT_SECRET": SECRET.decode()}


def _start(env, *args):
    proc = subprocess.Popen([sys.executable, "-c", "from provider.cli import app; app()", "serve", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


def _wait_port(proc, port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stdout.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not listen")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _client_ctx(pki, cert=False, tls12=False):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(pki["client"], pki["client_key"])
    return ctx


def test_serve_tls13_end_to_end_and_sigterm(tmp_path, pki):
    port = free_port()
    env = _setup(tmp_path, f'listen = "127.0.0.1:{port}"\ntls_cert = "{pki["cert"]}"\ntls_key = "{pki["key"]}"')
    proc = _start(env)
    try:
        _wait_port(proc, port)
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=url, verify=_client_ctx(pki), timeout=10) as c:
            r = c.get("/healthz")
            assert r.status_code == 200 and r.json()["token"]["logged_in"] is True
            assert r.json()["backends"]["soft"]["status"] == "available"        # the backends' last check
            assert r.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.3"
            op = bearer(sub="alice", roles=["operator"])
            assert c.post("/v1/keys", headers=op, json={"name": "web", "algorithm": "aes-256-gcm",
                                                        "usage": ["encrypt", "decrypt"]}).status_code == 201
            app = bearer(sub="app", roles=["service"], keys=["web"])
            t0 = time.perf_counter()
            n = 50
            for _ in range(n):
                ct = c.post("/v1/keys/web/encrypt", headers=app, json={"plaintext": "aGVsbG8=", "aad": "YQ=="})
                assert ct.status_code == 200
            per = (time.perf_counter() - t0) / n
            print(f"encrypt through TLS, JWT, audited: {1000 * per:.2f} ms/request ({1 / per:.0f}/s, 1 client)")
            pt = c.post("/v1/keys/web/decrypt", headers=app, json={"ciphertext": ct.json()["ciphertext"], "aad": "YQ=="})
            assert pt.json()["plaintext"] == "aGVsbG8="
            audit = c.get("/v1/audit", headers=bearer(sub="dave", roles=["auditor"]), params={"limit": 1000}).json()
            actions = [r["action"] for r in audit["records"]]
            assert "key.create" in actions and actions.count("rest.encrypt") == n
        with pytest.raises((ssl.SSLError, httpx.ConnectError)):
            httpx.get(url + "/healthz", verify=_client_ctx(pki, tls12=True))
    finally:
        rc = _stop(proc)
    assert rc == 0, proc.stdout.read().decode()


def test_serve_mtls_requires_a_client_certificate(tmp_path, pki):
    port = free_port()
    env = _setup(tmp_path, f'listen = "127.0.0.1:{port}"\ntls_cert = "{pki["cert"]}"\ntls_key = "{pki["key"]}"\n'
                           f'client_ca = "{pki["ca"]}"')
    proc = _start(env)
    try:
        _wait_port(proc, port)
        url = f"https://127.0.0.1:{port}/healthz"
        with pytest.raises((ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(url, verify=_client_ctx(pki)).raise_for_status()
        with httpx.Client(verify=_client_ctx(pki, cert=True)) as c:
            assert c.get(url).status_code == 200
            base = url.removesuffix("/healthz")
            r = c.post(base + "/v1/keys", headers=bearer(sub="alice", roles=["operator"]),
                       json={"name": "m", "algorithm": "aes-256-gcm", "usage": ["encrypt"]})
            assert r.status_code == 201, r.text
            records = c.get(base + "/v1/audit", headers=bearer(sub="dave", roles=["auditor"])).json()["records"]
        der = x509.load_pem_x509_certificate(Path(pki["client"]).read_bytes()).public_bytes(serialization.Encoding.DER)
        made = [x for x in records if x["action"] == "key.create"]
        assert made and made[0]["client"] == "sha256:" + hashlib.sha256(der).hexdigest()
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize("server, env_change, message", [
    ('listen = "0.0.0.0:{port}"', {}, "--insecure-dev"),                         # (with --insecure-dev)
    ('listen = "127.0.0.1:{port}"', {}, "tls_cert and tls_key"),                # no TLS files, no flag
    ('listen = "127.0.0.1:{port}"\ntls_cert = "/x"\ntls_key = "/y"', {"FERROHSM_JWT_SECRET": "short"}, "JWT secret"),
    ('listen = "127.0.0.1:{port}"\ntls_cert = "/x"\ntls_key = "/y"\njwks_file = "/nonexistent/jwks.json"', {},
     "jwks_file: "),
    ('listen = "127.0.0.1:{port}"\ntls_cert = "/x"\ntls_key = "/y"', {"FERROHSM_JWT_SECRET": ""}, "jwks_file"),
])
def test_serve_refuses_to_start(tmp_path, server, env_change, message):
    env = {**_setup(tmp_path, server.format(port=free_port())), **env_change}
    args = ("--insecure-dev",) if "0.0.0.0" in server else ()
    proc = _start(env, *args)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1 and message in out, out
    assert PIN not in out and SECRET.decode() not in out


def test_insecure_dev_on_loopback(tmp_path):
    port = free_port()
    proc = _start(_setup(tmp_path, f'listen = "127.0.0.1:{port}"'), "--insecure-dev")
    try:
        _wait_port(proc, port)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    finally:
        assert _stop(proc) == 0


def test_sigterm_lets_an_in_flight_request_finish(tmp_path):
    """A request whose body is still arriving when SIGTERM comes is answered (200), then
    the process exits 0; a new connection after the signal is refused."""
    import json as _json
    port = free_port()
    proc = _start(_setup(tmp_path, f'listen = "127.0.0.1:{port}"'), "--insecure-dev")
    try:
        _wait_port(proc, port)
        token = bearer(sub="alice", roles=["operator"])["Authorization"]
        body = _json.dumps({"name": "late", "algorithm": "aes-256-gcm", "usage": ["encrypt"]}).encode()
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None                       # still finishing the request
        s.sendall(body[10:])
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_with_a_jwks_and_no_secret(tmp_path):
    """`ferrohsm serve` with only [server] jwks_file: an EdDSA token of its key is
    accepted, an HS256 one refused (no secret is set, none may be guessed)."""
    priv = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [OKPAlgorithm.to_jwk(priv.public_key(), as_dict=True) | {"kid": "ed1"}]}))
    port = free_port()
    env = {**_setup(tmp_path, f'listen = "127.0.0.1:{port}"\njwks_file = "{path}"'), "FERROHSM_JWT_SECRET": ""}
    proc = _start(env, "--insecure-dev")
    try:
        _wait_port(proc, port)
        now = int(time.time())
        claims = {"sub": "alice", "roles": ["operator"], "iss": "ferrohsm", "aud": "ferrohsm", "iat": now,
                  "nbf": now - 1, "exp": now + 300}
        url = f"http://127.0.0.1:{port}/v1/keys"
        ok = jwt.encode(claims, priv, algorithm="EdDSA", headers={"kid": "ed1"})
        assert httpx.get(url, headers={"Authorization": f"Bearer {ok}"}).status_code == 200
        r = httpx.get(url, headers=bearer())
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    finally:
        assert _stop(proc) == 0
