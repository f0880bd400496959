"""`ferrohsm serve`: the service on uvicorn, from the configuration's [server] table.

TLS 1.3 only (the context's minimum version is raised after uvicorn builds it), with
a client CA for mTLS when `client_ca` is set (a client certificate is then required).
Plain HTTP only with --insecure-dev and only on a loopback address. The token is
unlocked once at start from the [server] pin source (file:/env:, as the backends read
theirs); the JWT secret is read from the environment variable `jwt_secret_env` names.
At SIGTERM uvicorn lets in-flight requests finish; then the scheduler and the audit
checkpointer stop, the audit file sink is flushed and the engine finalised."""

import hashlib
import ipaddress
import os
import signal
import ssl

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import constants as C
from ..audit import Checkpointer
from ..backends.factory import _pin_source
from ..errors import PKCS11Error
from ..governance import Scheduler, governance_of
from ..library import Library
from ..log import LOG
from .jwks import JwksFile
from .app import create_app

LOOPBACK = ("localhost",)


class ClientCertProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that hands the app the SHA-256 of the connection's
    client certificate (mTLS) as scope["extensions"]["tls"]["client_fingerprint"]:
    the audit records name the client by it."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            tls = {"client_fingerprint": "sha256:" + hashlib.sha256(der).hexdigest()}
            inner = self.app

            async def app(scope, receive, send):
                scope.setdefault("extensions", {})["tls"] = tls
                await inner(scope, receive, send)
            self.app = app


class TLS13Config(uvicorn.Config):
    """uvicorn's Config whose SSL context refuses anything below TLS 1.3."""

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_3


def _listen(spec: str) -> tuple:
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PKCS11Error(C.CKR_GENERAL_ERROR, f"[server] listen {spec!r}: use HOST:PORT")
    return host, int(port)


def _loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_slot(lib: Library, label: str) -> int:
    for slot in lib.get_slot_list(True):
        info = lib.get_token_info(slot)
        if info["flags"] & C.CKF_TOKEN_INITIALIZED and (not label or info["label"].decode().rstrip() == label):
            return slot
    raise PKCS11Error(C.CKR_SLOT_ID_INVALID, f"no initialised token {label!r}" if label else "no initialised token")


class Service:
    """The running parts: engine, logged-in session, audit, governance, scheduler."""

    def __init__(self, config, insecure_dev: bool = False, scheduler_interval: float = 60.0):
        s = config.server
        self.host, self.port = _listen(s.listen)
        if insecure_dev:
            if not _loopback(self.host):
                raise PKCS11Error(C.CKR_GENERAL_ERROR, "--insecure-dev serves plain HTTP on a loopback address only")
        elif not (s.tls_cert and s.tls_key):
            raise PKCS11Error(C.CKR_GENERAL_ERROR, "[server] tls_cert and tls_key are required "
                                                   "(plain HTTP only with --insecure-dev on loopback)")
        secret = os.environ.get(s.jwt_secret_env, "").encode()
        if len(secret) < 32 and (secret or not s.jwks_file):
            raise PKCS11Error(C.CKR_GENERAL_ERROR, f"the environment variable {s.jwt_secret_env} must hold the "
                                                   "JWT secret (at least 32 bytes), or [server] jwks_file name "
                                                   "the public keys of asymmetric tokens")
        if s.jwks_file:
            try:
                JwksFile(s.jwks_file)
            except (OSError, ValueError) as exc:
                raise PKCS11Error(C.CKR_GENERAL_ERROR, f"[server] jwks_file: {exc}") from None
        if not s.pin:
            raise PKCS11Error(C.CKR_GENERAL_ERROR, "[server] pin = \"env:NAME\" | \"file:PATH\" is required")
        self.settings, self.insecure = s, insecure_dev
        self.lib = Library(config)
        slot = _token_slot(self.lib, s.token)
        self.session = self.lib.open_session(slot, C.CKF_SERIAL_SESSION | C.CKF_RW_SESSION)
        self.lib.login(self.session, C.CKU_USER, _pin_source(s.pin))
        token = self.lib._token(slot)
        self.audit = token.audit            # the token's audit chain (Library: its own writer connection)
        self.gov = governance_of(self.lib, token)
        self.scheduler = Scheduler(self.gov, scheduler_interval)
        self.checkpointer = Checkpointer(self.audit)
        backends = self.lib.backends
        self.app = create_app(self.gov, s, secret, health=lambda: {"backends": backends.health_report()})

    def uvicorn_config(self) -> uvicorn.Config:
        s = self.settings
        kw = dict(host=self.host, port=self.port, log_level="warning", lifespan="off", server_header=False,
                  http="h11",          # even with httptools installed: h11's incomplete-event limit bounds the headers
                  h11_max_incomplete_event_size=2 * s.max_header + 16384, timeout_graceful_shutdown=30)
        if not self.insecure:
            kw.update(ssl_certfile=s.tls_cert, ssl_keyfile=s.tls_key)
            if s.client_ca:
                kw.update(ssl_ca_certs=s.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED, http=ClientCertProtocol)
        return TLS13Config(self.app, **kw)

    def run(self) -> None:
        self.scheduler.start()
        self.checkpointer.start()
        self.lib.backends.start_health_checks()     # every 60 s: /healthz "backends"
        # uvicorn shuts down gracefully at SIGTERM/SIGINT, then raises the signal again under
        # the handlers it found: these let the clean-up below run and the process exit 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        try:
            uvicorn.Server(self.uvicorn_config()).run()
        finally:
            self.scheduler.stop(10)
            self.checkpointer.stop()
            try:
                self.audit.flush()
                self.audit.checkpoint()         # the last records are covered by a signed checkpoint
            except Exception:                   # noqa: BLE001 - the engine is finalised whatever happens
                LOG.exception("audit: the checkpoint at shutdown was not written")
            finally:
                self.lib.finalize()
