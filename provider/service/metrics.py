"""The service's Prometheus metrics (one registry per app, served at /metrics):
requests by route template/method/status, latency, crypto operations by algorithm,
rate-limit rejections and JWT failures by reason. Routes are labelled by their
template (`/v1/keys/{key}`), never by a key name."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST  # noqa: F401


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ferrohsm_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("ferrohsm_http_request_seconds", "HTTP request latency", ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.crypto = Counter("ferrohsm_crypto_operations", "key uses through the API", ["algorithm", "operation"],
                              registry=r)
        self.rate_limited = Counter("ferrohsm_rate_limited", "requests refused by the rate limit", ["role"],
                                    registry=r)
        self.jwt_failures = Counter("ferrohsm_jwt_failures", "bearer tokens refused", ["reason"], registry=r)

        self._children: dict = {}          # (route, method, status) -> (counter child, histogram child)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and observe its latency (the labelled children looked up once)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
