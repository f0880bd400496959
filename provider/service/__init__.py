"""The REST service (`ferrohsm serve`): FastAPI over the governance API and the gate.

app.py builds the application (create_app), auth.py turns a JWT bearer token into a
Principal, roles.py is the one table of who may do what, ratelimit.py the per-subject
token buckets, metrics.py the Prometheus counters, crypto.py the key uses through the
gate, serve.py runs it on uvicorn over TLS 1.3."""
