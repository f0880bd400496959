"""The application: `create_app(gov, settings, secret)`.

Every request gets a correlation id (a well-formed X-Request-ID, else the trace id of
a W3C traceparent, else a new one), echoed back as X-Request-ID and carried by the
Principal into the audit records. Before any route runs the request's headers are
checked: two Authorization headers, a header longer than max_header, a bearer token in
the query string or a body larger than max_body are refused. Every route declares its
permission (roles.py) through `allow(permission)`: the dependency that authenticates the
bearer token, checks the role table and takes one token from the subject's bucket."""

import dataclasses
import json
import logging
import os
import re
import time

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..governance import GovernanceError
from ..governance import record as R
from . import auditing
from .auth import Authenticator
from .crypto import Crypto, unb64
from .errors import ApiError, answer, install
from .listing import KeyListing
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .ratelimit import UNAUTHENTICATED, Buckets
from .roles import PERMISSIONS, allowed
from .tracing import instrument

LOG = logging.getLogger("ferrohsm.service")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")
TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}\Z")
QUERY_TOKENS = frozenset({"access_token", "token", "jwt", "bearer", "id_token", "authorization"})
VERSION = Field(ge=1, le=2**31 - 1)
PATH_VERSION = Path(ge=1, le=2**31 - 1)
KEY = Path(min_length=1, max_length=256)
APPROVAL = Path(min_length=1, max_length=64)
TAG = Path(min_length=1, max_length=128)
B64 = Field(max_length=1 << 20)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewKey(Body):
    """What a governed key is made with (created or adopted)."""
    name: str = Field(min_length=1, max_length=128)
    algorithm: str = Field(max_length=32)
    usage: list[str] = Field(min_length=1, max_length=7)
    description: str = Field("", max_length=1024)
    owner: str = Field("", max_length=256)
    tags: list[str] = Field(default_factory=list, max_length=32)


class CreateKey(NewKey):
    rotation_period_days: int | None = Field(None, ge=1, le=365)


class Adopt(NewKey):
    """A plain PKCS#11 key of the token, named by its CKA_UNIQUE_ID (a pair: the private
    key's, and the public key's as public_uid), taken into governance as version 1."""
    uid: str = Field(min_length=1, max_length=128)
    public_uid: str | None = Field(None, min_length=1, max_length=128)
    approval_id: str | None = Field(None, max_length=64)


class Primary(Body):
    version: int = VERSION
    approval_id: str | None = Field(None, max_length=64)


class Approved(Body):
    approval_id: str | None = Field(None, max_length=64)


class Revoke(Body):
    reason: str = Field(max_length=64)


class Floors(Body):
    min_decrypt_version: int | None = Field(None, ge=1, le=2**31 - 1)
    min_encrypt_version: int | None = Field(None, ge=1, le=2**31 - 1)


class Flags(Body):
    exportable: bool | None = None
    allow_plaintext_backup: bool | None = None
    approval_id: str | None = Field(None, max_length=64)


class Tag(Body):
    dual_control: bool = False
    quorum: int = Field(2, ge=-2**31, le=2**31)
    approval_ttl_seconds: int = Field(86400, ge=-2**31, le=2**40)
    retention_days: int = Field(0, ge=-2**31, le=2**31)
    destroy_grace_seconds: int = Field(86400, ge=-2**31, le=2**40)
    rotation_period_days: int | None = Field(None, ge=-2**31, le=2**31)
    auto_rotate: bool = False
    security_level: str = Field("software", max_length=32)
    approval_id: str | None = Field(None, max_length=64)


class Encrypt(Body):
    plaintext: str = B64
    aad: str = Field("", max_length=1 << 16)


class Decrypt(Body):
    ciphertext: str = Field(max_length=(1 << 20) + 64)
    aad: str = Field("", max_length=1 << 16)


MAX_BATCH = 1000


class EncryptBatch(Body):
    items: list[Encrypt] = Field(min_length=1, max_length=MAX_BATCH)


class DecryptBatch(Body):
    items: list[Decrypt] = Field(min_length=1, max_length=MAX_BATCH)


class Sign(Body):
    message: str | None = Field(None, max_length=1 << 20)
    digest: str | None = Field(None, max_length=128)    # ECDSA keys: the message's SHA-256/384, base64


class Verify(Body):
    message: str | None = Field(None, max_length=1 << 20)
    digest: str | None = Field(None, max_length=128)
    signature: str = Field(max_length=4096)
    version: int | None = Field(None, ge=1, le=2**31 - 1)


class SignBatch(Body):
    items: list[Sign] = Field(min_length=1, max_length=MAX_BATCH)


class Wrap(Body):
    key: str = Field(min_length=1, max_length=256)          # the governed key to wrap (id or name)
    version: int | None = Field(None, ge=1, le=2**31 - 1)   # default: its primary
    approval_id: str | None = Field(None, max_length=64)


class Unwrap(Body):
    wrapped: str = Field(max_length=1 << 16)                # ferrohsm:v<N>:<base64>, as wrap gave it
    name: str = Field(min_length=1, max_length=128)         # the new governed key
    algorithm: str = Field(max_length=32)
    usage: list[str] = Field(min_length=1, max_length=7)
    description: str = Field("", max_length=1024)


class MacBody(Body):
    message: str = B64


class MacVerify(Body):
    message: str = B64
    mac: str = Field(max_length=4096)
    version: int | None = Field(None, ge=1, le=2**31 - 1)


def plain(record) -> dict:
    return dataclasses.asdict(record)


def raw_json(answer: dict) -> Response:
    """A route's answer of plain JSON types (str, int, lists, dicts) as it is, without
    FastAPI's jsonable_encoder walk: the hot key-use routes."""
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


def correlation_of(request: Request) -> str:
    rid = request.headers.get("x-request-id", "")
    if REQUEST_ID.match(rid):
        return rid
    m = TRACEPARENT.match(request.headers.get("traceparent", ""))
    return m.group(1) if m else os.urandom(16).hex()


class Guard:
    """Pure ASGI middleware (a BaseHTTPMiddleware costs a task group and memory streams
    per request): the correlation id, the header refusals before routing, the request
    metrics, X-Request-ID on the answer and the JSON log line (made only when logged)."""

    def __init__(self, app, settings, metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        request.state.request_id = rid = correlation_of(request)
        start = time.perf_counter()
        status = [500]                     # an exception escaping the app is a 500 (ServerErrorMiddleware)
        echoed = (b"x-request-id", rid.encode())

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                                      echoed]
            await send(message)
        try:
            refused = _refusal(request, self.settings)
            if refused:
                await answer(request, *refused)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "(unmatched)")
            self.metrics.request(route, scope["method"], status[0], seconds)
            if LOG.isEnabledFor(logging.INFO):
                LOG.info(json.dumps({"request_id": rid, "method": scope["method"], "route": route,
                                     "status": status[0], "ms": round(1000 * seconds, 2)}))


def create_app(gov, settings, secret: bytes, health=None) -> FastAPI:
    """The service over `gov` (a provider.governance.Governance whose token is logged
    in), [server] `settings`, the JWT `secret`. `health`: a callable adding fields to
    /healthz (the backends' state)."""
    app = FastAPI(title="FerroHSM", version="1", docs_url=None, redoc_url=None)   # no CDN assets
    install(app)
    metrics = Metrics()
    auth = Authenticator(settings, secret, lambda reason: metrics.jwt_failures.labels(reason).inc())
    buckets = Buckets(settings.rate)
    refusals = Buckets({"unauthenticated": UNAUTHENTICATED})
    crypto = Crypto(gov, metrics)
    listing = KeyListing(gov)
    app.state.gov, app.state.metrics, app.state.auth, app.state.buckets = gov, metrics, auth, buckets

    app.add_middleware(Guard, settings=settings, metrics=metrics)

    def allow(permission: str):
        assert permission in PERMISSIONS, permission

        async def check(request: Request):          # CPU only, never blocks: runs on the loop, no thread hop
            client = request.client.host if request.client else ""
            try:
                tls = request.scope.get("extensions", {}).get("tls", {})
                principal = auth.principal(request.headers.get("authorization"), request.state.request_id, client,
                                           tls.get("client_fingerprint", ""))
            except ApiError:
                wait = refusals.take(f"source:{client}", ("unauthenticated",))
                if wait:
                    metrics.rate_limited.labels("unauthenticated").inc()
                    raise ApiError(429, "rate_limited", "too many refused requests from this address",
                                   headers={"Retry-After": Buckets.retry_after(wait)}) from None
                raise
            if not allowed(principal.roles, permission):
                raise ApiError(403, "permission_denied", f"{permission} is not granted to your roles")
            wait = buckets.take(principal.subject, principal.roles)
            if wait:
                metrics.rate_limited.labels(",".join(sorted(principal.roles)) or "none").inc()
                raise ApiError(429, "rate_limited", "too many requests",
                               headers={"Retry-After": Buckets.retry_after(wait)})
            return principal
        return check

    def route(method: str, path: str, permission: str, **kw):
        return app.api_route(path, methods=[method], openapi_extra={"x-permission": permission}, **kw)

    # --- unauthenticated ---------------------------------------------------------------
    @app.get("/healthz", openapi_extra={"x-permission": "public"})
    def healthz():
        token = gov.token
        status = {"status": "ok", "token": {"initialized": bool(token.initialized), "logged_in": token.user is not None},
                  "jwt_failures": auth.failures, "rate_limited": buckets.rejected,
                  "cache": {"keys_list": listing.stats(), "jwt": {"hits": auth.cache_hits, "misses": auth.cache_misses}}}
        try:
            with token.lock:
                status["audit"] = {"head": token.store.audit_head()[0]}
            status["approvals_pending"] = len(gov.list_approvals(status="pending"))
        except Exception as exc:          # noqa: BLE001 - a health check reports, never fails
            status["status"] = "degraded"
            status["error"] = type(exc).__name__
        if health is not None:
            status.update(health())
        if not status["token"]["logged_in"]:
            status["status"] = "degraded"
        return status

    @app.get("/metrics", openapi_extra={"x-permission": "public"})
    def prometheus():
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    # --- the caller ------------------------------------------------------------------------
    @route("GET", "/v1/whoami", "session.read")
    async def whoami(p=Depends(allow("session.read"))):
        """The principal the bearer token authenticates (no key, no audit record)."""
        return {"subject": p.subject, "roles": sorted(p.roles), "keys": None if p.keys is None else sorted(p.keys),
                "session": p.session, "client": p.client, "request_id": p.correlation_id}

    # --- keys ------------------------------------------------------------------------------
    @route("POST", "/v1/keys", "keys.create", status_code=201)
    def create_key(body: CreateKey, p=Depends(allow("keys.create"))):
        return plain(gov.create_key(p, body.name, body.algorithm, body.usage, description=body.description,
                                    owner=body.owner, tags=tuple(body.tags),
                                    rotation_period_days=body.rotation_period_days))

    @route("GET", "/v1/keys", "keys.read")
    def list_keys(request: Request, tag: str | None = Query(None, max_length=128),
                  state: str | None = Query(None, max_length=32), algorithm: str | None = Query(None, max_length=32),
                  name_prefix: str | None = Query(None, max_length=128),
                  page_token: str | None = Query(None, max_length=512),
                  page_size: int = Query(100, ge=1, le=1000), p=Depends(allow("keys.read"))):
        data, etag = listing.answer(tag=tag, state=state, algorithm=algorithm, name_prefix=name_prefix,
                                    page_token=page_token, page_size=page_size)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(data, media_type="application/json", headers={"ETag": etag})

    @route("POST", "/v1/keys/adopt", "keys.adopt", status_code=201)
    def adopt(body: Adopt, p=Depends(allow("keys.adopt"))):
        return plain(gov.adopt(p, body.uid, body.name, body.algorithm, body.usage, public_uid=body.public_uid,
                               description=body.description, owner=body.owner, tags=tuple(body.tags),
                               approval_id=body.approval_id))

    @route("GET", "/v1/keys/{key}", "keys.read")
    def get_key(key: str = KEY, p=Depends(allow("keys.read"))):
        return plain(gov.get_key(key))

    @route("POST", "/v1/keys/{key}/rotate", "keys.manage")
    def rotate(key: str = KEY, pending: bool = False, p=Depends(allow("keys.manage"))):
        return plain(gov.rotate(p, key, pending=pending))

    @route("POST", "/v1/keys/{key}/primary", "keys.manage")
    def update_primary(body: Primary, key: str = KEY, p=Depends(allow("keys.manage"))):
        return plain(gov.update_primary(p, key, body.version, approval_id=body.approval_id))

    @route("POST", "/v1/keys/{key}/versions/{version}/enable", "keys.manage")
    def enable(key: str = KEY, version: int = PATH_VERSION, p=Depends(allow("keys.manage"))):
        return plain(gov.enable_version(p, key, version))

    @route("POST", "/v1/keys/{key}/versions/{version}/disable", "keys.manage")
    def disable(key: str = KEY, version: int = PATH_VERSION, p=Depends(allow("keys.manage"))):
        return plain(gov.disable_version(p, key, version))

    @route("POST", "/v1/keys/{key}/versions/{version}/schedule-destroy", "keys.manage")
    def schedule_destroy(body: Approved | None = None, key: str = KEY, version: int = PATH_VERSION,
                         p=Depends(allow("keys.manage"))):
        return plain(gov.schedule_destroy(p, key, version, approval_id=body.approval_id if body else None))

    @route("POST", "/v1/keys/{key}/versions/{version}/restore", "keys.manage")
    def restore(key: str = KEY, version: int = PATH_VERSION, p=Depends(allow("keys.manage"))):
        return plain(gov.restore(p, key, version))

    @route("POST", "/v1/keys/{key}/versions/{version}/revoke", "keys.manage")
    def revoke(body: Revoke, key: str = KEY, version: int = PATH_VERSION, p=Depends(allow("keys.manage"))):
        return plain(gov.revoke(p, key, version, body.reason))

    # --- policy: tags, floors, flags (administrators) ----------------------------------------
    @route("GET", "/v1/tags", "policy.read")
    def list_tags(p=Depends(allow("policy.read"))):
        return {"tags": [plain(t) for t in gov.list_tags()]}

    @route("GET", "/v1/tags/{name}", "policy.read")
    def get_tag(name: str = TAG, p=Depends(allow("policy.read"))):
        return plain(gov.get_tag(name))

    @route("PUT", "/v1/tags/{name}", "policy.manage")
    def put_tag(body: Tag, name: str = TAG, p=Depends(allow("policy.manage"))):
        fields = body.model_dump(exclude={"approval_id"})
        return plain(gov.put_tag(p, R.PolicyTag(name=name, **fields), approval_id=body.approval_id))

    @route("POST", "/v1/keys/{key}/tags/{name}", "policy.manage")
    def attach_tag(key: str = KEY, name: str = TAG, p=Depends(allow("policy.manage"))):
        return plain(gov.attach_tag(p, key, name))

    @route("DELETE", "/v1/keys/{key}/tags/{name}", "policy.manage")
    def detach_tag(key: str = KEY, name: str = TAG, approval_id: str | None = Query(None, max_length=64),
                   p=Depends(allow("policy.manage"))):
        return plain(gov.detach_tag(p, key, name, approval_id=approval_id))

    @route("POST", "/v1/keys/{key}/floors", "policy.manage")
    def set_floors(body: Floors, key: str = KEY, p=Depends(allow("policy.manage"))):
        return plain(gov.set_floors(p, key, min_decrypt_version=body.min_decrypt_version,
                                    min_encrypt_version=body.min_encrypt_version))

    @route("POST", "/v1/keys/{key}/flags", "policy.manage")
    def set_flags(body: Flags, key: str = KEY, p=Depends(allow("policy.manage"))):
        return plain(gov.set_flags(p, key, exportable=body.exportable,
                                   allow_plaintext_backup=body.allow_plaintext_backup, approval_id=body.approval_id))

    # --- key uses ----------------------------------------------------------------------------
    @route("POST", "/v1/keys/{key}/encrypt", "keys.use")
    async def encrypt(body: Encrypt, key: str = KEY, p=Depends(allow("keys.use"))):
        return raw_json(await crypto.run(crypto.encrypt, p, key, unb64(body.plaintext, "plaintext"),
                                         unb64(body.aad, "aad")))

    @route("POST", "/v1/keys/{key}/decrypt", "keys.use")
    async def decrypt(body: Decrypt, key: str = KEY, p=Depends(allow("keys.use"))):
        return await crypto.run(crypto.decrypt, p, key, body.ciphertext, unb64(body.aad, "aad"))

    @route("POST", "/v1/keys/{key}/encrypt/batch", "keys.use")
    async def encrypt_batch(body: EncryptBatch, key: str = KEY, p=Depends(allow("keys.use"))):
        items = [(unb64(i.plaintext, "plaintext"), unb64(i.aad, "aad")) for i in body.items]
        return raw_json(await crypto.run(crypto.encrypt_batch, p, key, items))

    @route("POST", "/v1/keys/{key}/decrypt/batch", "keys.use")
    async def decrypt_batch(body: DecryptBatch, key: str = KEY, p=Depends(allow("keys.use"))):
        items = [(i.ciphertext, unb64(i.aad, "aad")) for i in body.items]
        return await crypto.run(crypto.decrypt_batch, p, key, items)

    @route("POST", "/v1/keys/{key}/sign", "keys.use")
    def sign(body: Sign, key: str = KEY, p=Depends(allow("keys.use"))):
        return crypto.sign(p, key, *_message_or_digest(body))

    @route("POST", "/v1/keys/{key}/sign/batch", "keys.use")
    def sign_batch(body: SignBatch, key: str = KEY, p=Depends(allow("keys.use"))):
        return crypto.sign_batch(p, key, [_message_or_digest(i) for i in body.items])

    @route("POST", "/v1/keys/{key}/wrap", "keys.use")
    def wrap(body: Wrap, key: str = KEY, p=Depends(allow("keys.use"))):
        return crypto.wrap(p, key, body.key, body.version, body.approval_id)

    @route("POST", "/v1/keys/{key}/unwrap", "keys.use", status_code=201)
    def unwrap(body: Unwrap, key: str = KEY, p=Depends(allow("keys.use"))):
        return crypto.unwrap(p, key, body.wrapped, body.name, body.algorithm, body.usage, body.description)

    @route("POST", "/v1/keys/{key}/verify", "keys.use")
    async def verify(body: Verify, key: str = KEY, p=Depends(allow("keys.use"))):
        message, digest = _message_or_digest(body)
        return await crypto.run(crypto.verify, p, key, message, unb64(body.signature, "signature"), body.version,
                                digest)

    @route("POST", "/v1/keys/{key}/mac", "keys.use")
    async def mac(body: MacBody, key: str = KEY, p=Depends(allow("keys.use"))):
        return await crypto.run(crypto.mac, p, key, unb64(body.message, "message"))

    @route("POST", "/v1/keys/{key}/mac/verify", "keys.use")
    async def mac_verify(body: MacVerify, key: str = KEY, p=Depends(allow("keys.use"))):
        return await crypto.run(crypto.mac_verify, p, key, unb64(body.message, "message"), unb64(body.mac, "mac"),
                                body.version)

    # --- approvals ---------------------------------------------------------------------------
    @route("GET", "/v1/approvals", "approvals.read")
    def list_approvals(status: str | None = Query(None, max_length=32), p=Depends(allow("approvals.read"))):
        return {"approvals": [plain(a) for a in gov.list_approvals(status=status)]}

    @route("POST", "/v1/approvals/{approval_id}/approve", "approvals.decide")
    def approve(approval_id: str = APPROVAL, p=Depends(allow("approvals.decide"))):
        return plain(gov.approve(p, approval_id))

    @route("POST", "/v1/approvals/{approval_id}/deny", "approvals.decide")
    def deny(approval_id: str = APPROVAL, p=Depends(allow("approvals.decide"))):
        return plain(gov.deny(p, approval_id))

    # --- audit ---------------------------------------------------------------------------------
    @route("GET", "/v1/audit", "audit.read")
    def audit(after: int = Query(0, ge=0, le=2**62), limit: int = Query(100, ge=1, le=1000),
              key_id: str | None = Query(None, max_length=64), action: str | None = Query(None, max_length=64),
              p=Depends(allow("audit.read"))):
        return auditing.query(gov.token, after, limit, key_id=key_id, action=action)

    @route("GET", "/v1/audit/export", "audit.read")
    def audit_export(p=Depends(allow("audit.read"))):
        """The whole log as JSON lines, as `ferrohsm audit export` writes it."""
        return StreamingResponse(auditing.export(gov.token), media_type="application/x-ndjson")

    @route("GET", "/v1/audit/checkpoints", "audit.read")
    def audit_checkpoints(p=Depends(allow("audit.read"))):
        """The signed checkpoints, as the checkpoint file holds them (`audit verify --checkpoints`)."""
        return Response(auditing.checkpoints(gov.token), media_type="application/x-ndjson")

    @route("POST", "/v1/audit/verify", "audit.read")
    def audit_verify(p=Depends(allow("audit.read"))):
        return auditing.verify(gov.token)

    instrument(app)                        # outermost: a request refused before routing is a span too
    return app


def _message_or_digest(body) -> tuple:
    """(message, None) or (None, digest): exactly one of them is given."""
    if (body.message is None) == (body.digest is None):
        raise ApiError(400, "invalid_argument", "give either message or digest")
    if body.digest is not None:
        return None, unb64(body.digest, "digest")
    return unb64(body.message, "message"), None


def _refusal(request: Request, settings) -> tuple | None:
    """(status, code, message) when the request's headers are refused before routing."""
    headers = request.headers
    if len(headers.getlist("authorization")) > 1:
        return 400, "duplicate_authorization", "more than one Authorization header"
    for name, value in request.headers.raw:
        if len(name) + len(value) > settings.max_header:
            return 431, "header_too_large", f"a header is longer than {settings.max_header} bytes"
    if any(k.lower() in QUERY_TOKENS for k in request.query_params):
        return 400, "token_in_query", "credentials are accepted in the Authorization header only"
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            return 400, "bad_request", "bad Content-Length"
        if int(length) > settings.max_body:
            return 413, "too_large", f"the body is larger than {settings.max_body} bytes"
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        return 411, "length_required", "a body must come with a Content-Length"
    return None


__all__ = ["create_app", "GovernanceError"]
