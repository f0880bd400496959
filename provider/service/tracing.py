"""OpenTelemetry spans: one SERVER span per request, named by the route template (so
`/v1/keys/{key}` is one name however many keys there are), a child of the caller's W3C
`traceparent` when it sends one, carrying the method, route, status and the request's
correlation id (never a header value, body or token). Core operations open child spans
through `span(name)` (the tracer of the request being served, carried in a context
variable, so code below the routes — crypto.py's gate step — needs no request).

The tracer comes from `app.state.tracer_provider` when one is set (the tests give an SDK
provider with the in-memory exporter; `ferrohsm serve` may give one with an exporter),
else from the global provider, which without the SDK configured is a no-op: exporting is
optional and configured. When no provider is configured at all (neither the app's nor a
global one: the API's proxy or no-op provider) a request opens no span and pays only
that check; a provider set later is seen at the next request."""

from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

NAME = "ferrohsm.service"
PROPAGATOR = TraceContextTextMapPropagator()
_TRACER: ContextVar = ContextVar("ferrohsm_service_tracer", default=None)


OFF = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracer_of(app) -> trace.Tracer | None:
    """The request's tracer, or None when tracing is off (no provider configured)."""
    provider = getattr(app.state, "tracer_provider", None) or trace.get_tracer_provider()
    return None if isinstance(provider, OFF) else provider.get_tracer(NAME)


class Spans:
    """Pure ASGI middleware (outermost, so a request refused before routing is a span
    too)."""

    def __init__(self, app, service):
        self.app, self.service = app, service       # service: the FastAPI app, for its state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tracer = tracer_of(self.service)
        _TRACER.set(tracer)
        if tracer is None:
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
                   if k in (b"traceparent", b"tracestate")}
        status = {}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        method = scope.get("method", "")
        with tracer.start_as_current_span(
                f"{method} (unmatched)", context=PROPAGATOR.extract(carrier), kind=SpanKind.SERVER,
                attributes={"http.request.method": method}) as current:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", "(unmatched)")
                current.update_name(f"{method} {route}")
                current.set_attribute("http.route", route)
                state = scope.get("state") or {}
                if state.get("request_id"):
                    current.set_attribute("ferrohsm.request_id", state["request_id"])
                code = status.get("code", 500)
                current.set_attribute("http.response.status_code", code)
                if code >= 500:
                    current.set_status(Status(StatusCode.ERROR))


def instrument(app):
    app.add_middleware(Spans, service=app)


@contextmanager
def span(name: str, **attributes):
    """A child span of the request's for one core operation (the gate and its audit
    record, a mechanism run); outside a request, the global tracer's."""
    tracer = _TRACER.get()
    if tracer is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, OFF):
            yield trace.INVALID_SPAN             # tracing is off: no span, nothing recorded
            return
        tracer = provider.get_tracer(NAME)
    with tracer.start_as_current_span(name, attributes=attributes) as s:
        yield s
