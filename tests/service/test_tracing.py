"""OpenTelemetry spans per route through a real uvicorn, read with the SDK's in-memory
exporter: one SERVER span per request named by the route template, with the method,
status and correlation id, a child of the caller's traceparent; refused requests are
spans too; no token or header value in any attribute."""

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from .conftest import bearer, make_jwt

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def traced(service) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service.app.state.tracer_provider = provider
    return exporter


def finished(exporter, n: int) -> list:
    """The spans once n have ended: a span ends just after its response's last byte is
    sent, so the client may read the answer a moment before."""
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(exporter.get_finished_spans())


def test_a_span_per_route(service):
    spans = traced(service)
    h = bearer(roles=("operator",))
    assert service.post("/v1/keys", headers=h, json={"name": "k1", "algorithm": "aes-256-gcm",
                                                     "usage": ["encrypt", "decrypt"]}).status_code == 201
    assert service.get("/v1/keys/k1", headers={**h, "X-Request-ID": "req-7"}).status_code == 200
    assert service.get("/v1/keys/missing", headers=h).status_code == 404
    assert service.get("/healthz", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}).status_code == 200
    got = finished(spans, 4)
    assert [s.name for s in got] == ["POST /v1/keys", "GET /v1/keys/{key}", "GET /v1/keys/{key}", "GET /healthz"]
    assert all(s.kind is SpanKind.SERVER for s in got)
    assert [s.attributes["http.response.status_code"] for s in got] == [201, 200, 404, 200]
    assert got[1].attributes["ferrohsm.request_id"] == "req-7"
    assert got[1].attributes["http.route"] == "/v1/keys/{key}"
    # the caller's trace continues: same trace id, its span the parent
    assert format(got[3].context.trace_id, "032x") == TRACE
    assert format(got[3].parent.span_id, "016x") == "00f067aa0ba902b7"
    assert got[0].context.trace_id != got[1].context.trace_id          # unrelated requests, unrelated traces
    assert all(s.status.status_code is not StatusCode.ERROR for s in got)


def test_refused_requests_are_spans_without_secrets(service):
    spans = traced(service)
    t = make_jwt()
    assert service.get(f"/v1/keys?access_token={t}").status_code == 400
    assert service.get("/v1/keys", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert service.get("/nowhere").status_code == 404
    got = finished(spans, 3)
    assert [s.name for s in got] == ["GET (unmatched)", "GET /v1/keys", "GET (unmatched)"]
    assert [s.attributes["http.response.status_code"] for s in got] == [400, 401, 404]
    for s in got:
        assert all(t not in str(v) and "nope" not in str(v) for v in s.attributes.values())


def test_no_provider_is_a_no_op(service):
    # without an SDK provider the global one is the API's no-op: requests still answer
    assert service.get("/healthz").status_code == 200


def test_the_gate_step_is_a_child_span(service):
    spans = traced(service)
    admin = bearer(roles=("operator",))
    assert service.post("/v1/keys", headers=admin, json={"name": "data", "algorithm": "aes-256-gcm",
                                                         "usage": ["encrypt", "decrypt"]}).status_code == 201
    use = bearer(sub="ci", roles=("service",), keys=["data"])
    r = service.post("/v1/keys/data/encrypt", headers=use, json={"plaintext": "aGVsbG8=", "aad": ""})
    assert r.status_code == 200, r.text
    got = finished(spans, 3)
    route = next(s for s in got if s.name == "POST /v1/keys/{key}/encrypt")
    gate = next(s for s in got if s.name == "ferrohsm.gate")
    assert gate.parent.span_id == route.context.span_id and gate.context.trace_id == route.context.trace_id
    assert gate.attributes["ferrohsm.use"] == "encrypt" and gate.attributes["ferrohsm.key_version"] == 1
    assert gate.attributes["ferrohsm.key_id"] == r.json()["key_id"]
    assert "aGVsbG8=" not in str(dict(gate.attributes)) and "hello" not in str(dict(gate.attributes))
