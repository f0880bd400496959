"""Steps 5 and 6: the per-subject token bucket (429 + Retry-After, one subject's flood
does not starve another) and /metrics (Prometheus text, parsed by prometheus-client's
own parser; promtool when Debian's prometheus is installed)."""

import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from provider.config import ServerSettings
from provider.governance import Governance
from provider.service.app import create_app
from provider.service.ratelimit import Buckets
from tests.unit.govkit import new_token

from .conftest import SECRET, Running, bearer


def test_bucket_refills_at_its_rate():
    now = [0.0]
    b = Buckets({"service": (2.0, 3), "auditor": (1.0, 1)}, clock=lambda: now[0])
    assert [b.take("a", {"service"}) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take("a", {"service"})
    assert wait == pytest.approx(0.5) and Buckets.retry_after(wait) == "1"
    assert b.take("b", {"service"}) == 0.0               # per subject
    now[0] += 0.5
    assert b.take("a", {"service"}) == 0.0
    assert b.rate_of({"service", "auditor"}) == (2.0, 3)  # the highest of its roles
    assert b.rejected == 1


@pytest.fixture
def limited(tmp_path):
    token = new_token("memory")
    gov = Governance(token)
    settings = ServerSettings(rate={"administrator": (1.0, 3), "operator": (1.0, 3), "auditor": (0.5, 2),
                                    "service": (1.0, 3)})
    running = Running(create_app(gov, settings, SECRET))
    yield running
    running.stop()


def test_429_with_retry_after_per_subject(limited):
    import httpx
    with httpx.Client(base_url=limited.url) as c:
        a = bearer(sub="flood", roles=["auditor"])
        codes = [c.get("/v1/keys", headers=a).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        r = c.get("/v1/keys", headers=a)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert c.get("/v1/keys", headers=bearer(sub="quiet", roles=["auditor"])).status_code == 200
        time.sleep(2.1)
        assert c.get("/v1/keys", headers=a).status_code == 200
        text = c.get("/metrics").text
        limited_total = [s for f in text_string_to_metric_families(text) if f.name == "ferrohsm_rate_limited"
                         for s in f.samples if s.name.endswith("_total")]
        assert limited_total and limited_total[0].value == 3


def test_metrics_count_routes_statuses_crypto_and_jwt_failures(service):
    admin = bearer(roles=["administrator"])
    service.post("/v1/keys", headers=admin, json={"name": "m", "algorithm": "aes-256-gcm", "usage": ["encrypt"]})
    app = bearer(sub="app", roles=["service"], keys=["m"])
    for _ in range(3):
        assert service.post("/v1/keys/m/encrypt", headers=app, json={"plaintext": "aGk="}).status_code == 200
    service.get("/v1/keys/secret-name", headers=admin)
    service.get("/v1/keys", headers={"Authorization": "Bearer x.y.z"})
    r = service.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["ferrohsm_http_requests"].samples
                if s.name.endswith("_total")}
    assert requests[("/v1/keys/{key}/encrypt", "200")] == 3
    assert requests[("/v1/keys/{key}", "404")] == 1
    assert "secret-name" not in r.text                     # routes by template only
    crypto = [s for s in families["ferrohsm_crypto_operations"].samples if s.name.endswith("_total")]
    assert crypto[0].labels == {"algorithm": "aes-256-gcm", "operation": "encrypt"} and crypto[0].value == 3
    jwt = {s.labels["reason"]: s.value for s in families["ferrohsm_jwt_failures"].samples if s.name.endswith("_total")}
    assert jwt.get("malformed") == 1
    assert "ferrohsm_http_request_seconds" in families
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "metrics"], input=r.content, capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_refused_tokens_are_rate_limited_per_source(limited):
    import httpx
    with httpx.Client(base_url=limited.url) as c:
        codes = [c.get("/v1/keys", headers={"Authorization": "Bearer guess"}).status_code for _ in range(25)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        r = c.get("/v1/keys", headers={"Authorization": "Bearer guess"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/keys", headers=bearer(sub="good", roles=["auditor"])).status_code == 200   # a good token still runs
