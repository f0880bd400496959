"""Step 1 and 2 of the service: JSON errors with stable codes (never a traceback, 4xx for
client mistakes), the header limits, the correlation id, and the JWT check."""

import json

import jwt
import pytest

from .conftest import SECRET, bearer, make_jwt


def error(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()["error"]
    assert body["code"] == code, body
    assert "Traceback" not in r.text
    return body


def test_request_id_echoed_and_made(service):
    r = service.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    assert r.json()["status"] == "ok"
    made = service.get("/healthz").headers["x-request-id"]
    assert len(made) == 32
    bad = service.get("/healthz", headers={"X-Request-ID": "no spaces allowed"}).headers["x-request-id"]
    assert bad != "no spaces allowed"
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert service.get("/healthz", headers={"traceparent": tp}).headers["x-request-id"] == \
        "4bf92f3577b34da6a3ce929d0e0e4736"
    # the id in the error body too
    assert error(service.get("/v1/keys", headers={"X-Request-ID": "r1"}), 401, "unauthenticated")["request_id"] == "r1"


def test_unknown_route_and_method_are_json(service):
    error(service.get("/nope"), 404, "not_found")
    error(service.delete("/healthz"), 405, "method_not_allowed")


def test_validation_is_422_with_a_code(service):
    h = bearer()
    error(service.post("/v1/keys", headers=h, content=b"{not json", ), 422, "invalid_argument")
    error(service.post("/v1/keys", headers=h, json={"name": "k"}), 422, "invalid_argument")
    error(service.post("/v1/keys", headers=h, json={"name": "k", "algorithm": "aes-256-gcm",
                                                    "usage": ["encrypt"], "extra": 1}), 422, "invalid_argument")
    error(service.get("/v1/keys?page_size=0", headers=h), 422, "invalid_argument")
    error(service.post("/v1/keys", headers=h, json={"name": "k", "algorithm": "des", "usage": ["encrypt"]}),
          400, "invalid_argument")
    error(service.get("/v1/keys?page_token=%%%", headers=h), 400, "invalid_argument")
    error(service.get("/v1/keys/missing", headers=h), 404, "not_found")


def test_header_limits(service):
    t = make_jwt()
    r = service.get("/v1/keys", headers=[("Authorization", f"Bearer {t}"), ("Authorization", f"Bearer {t}")])
    error(r, 400, "duplicate_authorization")
    error(service.get("/v1/keys", headers={"X-Big": "a" * 9000}), 431, "header_too_large")
    error(service.get(f"/v1/keys?access_token={t}"), 400, "token_in_query")
    error(service.get("/v1/keys?token=x", headers={"Authorization": f"Bearer {t}"}), 400, "token_in_query")
    error(service.post("/v1/keys", headers={"Authorization": f"Bearer {t}", "Content-Type": "application/json"},
                       content=b"x" * (1 << 20 + 1)), 413, "too_large")


@pytest.mark.parametrize("why, headers", [
    ("missing", {}),
    ("not bearer", {"Authorization": "Basic YWxpY2U6eA=="}),
    ("not a jwt", {"Authorization": "Bearer abc.def"}),
    ("wrong secret", bearer(secret=b"t" * 48)),
    ("expired", bearer(lifetime=-120)),
    ("too long lived", bearer(lifetime=7200)),
    ("wrong audience", bearer(aud="someone-else")),
    ("wrong issuer", bearer(iss="evil")),
    ("no exp", bearer(exp=None)),
    ("no sub", bearer(sub=None)),
    ("HS384", bearer(alg="HS384")),
    ("not yet valid", bearer(nbf=4_000_000_000)),
])
def test_bad_tokens_are_401(service, why, headers):
    body = error(service.get("/v1/keys", headers=headers), 401, "unauthenticated")
    assert SECRET.decode() not in json.dumps(body)


def test_alg_none_and_rs_confusion_refused(service):
    unsigned = jwt.encode({"sub": "x", "roles": ["administrator"], "iss": "ferrohsm", "aud": "ferrohsm",
                           "iat": 1, "nbf": 1, "exp": 4_000_000_000}, None, algorithm="none")
    error(service.get("/v1/keys", headers={"Authorization": f"Bearer {unsigned}"}), 401, "unauthenticated")
    # a token claiming RS256 but HMACed with the secret (the HS/RS confusion) is refused by its header
    import base64
    import hashlib
    import hmac
    def part(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    head = part({"alg": "RS256", "typ": "JWT"})
    claims = part({"sub": "x", "roles": ["administrator"], "iss": "ferrohsm", "aud": "ferrohsm",
                   "iat": 1, "nbf": 1, "exp": 4_000_000_000})
    sig = base64.urlsafe_b64encode(hmac.new(SECRET, f"{head}.{claims}".encode(), hashlib.sha256).digest())
    forged = f"{head}.{claims}.{sig.rstrip(b'=').decode()}"
    error(service.get("/v1/keys", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthenticated")
    assert service.app.state.auth.failures >= 2


def test_a_good_token_is_a_principal(service):
    r = service.post("/v1/keys", headers=bearer(sub="alice", jti="s-1"),
                     json={"name": "k1", "algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]},
                     )
    assert r.status_code == 201, r.text
    actor = service.gov.events[-1]["actor"]
    assert actor.subject == "alice" and actor.roles == {"operator"} and actor.interface == "rest"
    assert actor.session == "s-1" and actor.correlation_id == r.headers["x-request-id"]
    assert actor.client.startswith("jwt:") and SECRET.hex()[:16] not in actor.client
    # unknown role names are dropped: no permission
    error(service.get("/v1/keys", headers=bearer(roles=["root"])), 403, "permission_denied")


def test_structured_log_lines_carry_the_request_id(service, caplog):
    import logging
    logger = logging.getLogger("ferrohsm.service")
    logger.addHandler(caplog.handler)   # directly: once a Library configured logging, "ferrohsm" does not propagate
    try:
        with caplog.at_level(logging.INFO, logger="ferrohsm.service"):
            service.get("/v1/keys", headers={**bearer(roles=["auditor"]), "X-Request-ID": "log-me"})
    finally:
        logger.removeHandler(caplog.handler)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ferrohsm.service"]
    mine = [x for x in lines if x["request_id"] == "log-me"]
    assert mine and mine[0]["route"] == "/v1/keys" and mine[0]["status"] == 200 and "ms" in mine[0]
    assert all("Bearer" not in r.getMessage() for r in caplog.records)


def test_healthz_reports_token_audit_and_counters(service):
    service.get("/v1/keys", headers={"Authorization": "Bearer nope"})
    h = service.get("/healthz").json()
    assert h["status"] == "ok" and h["token"] == {"initialized": True, "logged_in": True}
    assert h["jwt_failures"] >= 1 and h["rate_limited"] == 0
    assert h["audit"]["head"] >= 0 and h["approvals_pending"] == 0
