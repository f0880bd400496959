"""The REST service on a real uvicorn (in a thread, plain HTTP on loopback) over a real
token store and the governance API; JWTs made here with PyJWT; the gate's audit records
of key uses kept in a list the tests read."""

import base64
import socket
import threading
import time
from collections.abc import Mapping

import httpx
import jwt
import pytest
import uvicorn

from provider.config import ServerSettings
from provider.audit import Audit, token_signer
from provider.governance import Governance
from provider.governance.auditing import recorder
from provider.service.app import create_app
from tests.unit.govkit import Clock, new_token

SECRET = b"s" * 48
HMAC_KEY = b"h" * 32                       # the audit records' HMAC key
ISS = AUD = "ferrohsm"


def make_jwt(sub="alice", roles=("operator",), lifetime=300, secret=SECRET, alg="HS256", headers=None, **claims):
    now = int(time.time())
    body = {"sub": sub, "roles": list(roles), "iss": ISS, "aud": AUD, "iat": now, "nbf": now - 1,
            "exp": now + lifetime, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm=alg, headers=headers)


def bearer(**kw) -> dict:
    return {"Authorization": f"Bearer {make_jwt(**kw)}"}


class Bearer(Mapping):
    """Headers with a bearer token minted when a request reads them (a module-level one
    made at collection would have expired by the time a long run reaches its tests)."""

    def __init__(self, **kw):
        self.kw = kw

    def _headers(self) -> dict:
        return bearer(**self.kw)

    def __getitem__(self, name):
        return self._headers()[name]

    def __iter__(self):
        return iter(self._headers())

    def __len__(self):
        return 1


# the people of the route tests: two operators, an administrator, an auditor
OP = Bearer(sub="alice", roles=["operator"])
BOB = Bearer(sub="bob", roles=["operator"])
ADMIN = Bearer(sub="carol", roles=["administrator"])
AUDITOR = Bearer(sub="dave", roles=["auditor"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, app, **config):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def service(tmp_path):
    token = new_token("sqlite", tmp_path)

    def signer():                          # the token's checkpoint key, as open_audit gives it
        with token.lock:
            return token_signer(token)
    audit = Audit(token.store, HMAC_KEY, signer)
    token.audit = audit
    events = []

    def both(event):                       # the chain, and a list the tests read the actors from
        events.append(event)
        recorder(audit)(event)
    gov = Governance(token, both, clock=Clock(time.time()))
    gov.events = events
    settings = ServerSettings(rate={"administrator": (1000.0, 1000), "operator": (1000.0, 1000),
                                    "auditor": (1000.0, 1000), "service": (1000.0, 1000)})
    app = create_app(gov, settings, SECRET)
    running = Running(app)
    client = httpx.Client(base_url=running.url, timeout=10)
    client.gov, client.app, client.audit = gov, app, audit
    yield client
    client.close()
    running.stop()
    token.store.close()
