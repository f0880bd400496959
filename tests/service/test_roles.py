"""Step 3: the one role table. Every route of the served OpenAPI schema declares its
permission; walking every route with every role, a role outside the permission's set
gets 403 permission_denied and a role inside it gets past the check (whatever the
route then answers for the made-up arguments, never 401/403 and never a 5xx)."""

from provider.service.roles import PERMISSIONS, ROLES

from .conftest import bearer

ARGS = {"{key}": "k1", "{version}": "1", "{approval_id}": "00000000-0000-0000-0000-000000000000", "{name}": "t1"}


def routes(service):
    schema = service.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op.get("x-permission")


def concrete(path: str) -> str:
    for k, v in ARGS.items():
        path = path.replace(k, v)
    return path


def test_every_route_declares_a_known_permission(service):
    seen = set()
    for method, path, permission in routes(service):
        assert permission == "public" or permission in PERMISSIONS, (method, path, permission)
        seen.add(permission)
    assert set(PERMISSIONS) <= seen          # no permission of the table is unused
    # the app's own routes, not only the schema's
    for r in service.app.routes:
        if getattr(r, "include_in_schema", False):
            assert (r.openapi_extra or {}).get("x-permission"), r.path


def test_every_route_with_every_role(service):
    r = service.post("/v1/keys", headers=bearer(roles=["administrator"]),
                     json={"name": "k1", "algorithm": "aes-256-gcm", "usage": ["encrypt", "decrypt"]})
    assert r.status_code == 201
    walked = 0
    for method, path, permission in routes(service):
        if permission == "public":
            continue
        for role in ROLES:
            headers = bearer(sub=f"walker-{role}", roles=[role], keys=["k1"])
            resp = service.request(method, concrete(path), headers=headers, json={})
            walked += 1
            assert resp.status_code < 500, (method, path, role, resp.text)
            code = resp.json().get("error", {}).get("code") if resp.status_code >= 400 else None
            if role in PERMISSIONS[permission]:
                assert code not in ("permission_denied", "unauthenticated"), (method, path, role, resp.text)
            else:
                assert resp.status_code == 403 and code == "permission_denied", (method, path, role, resp.text)
    assert walked == 4 * 37          # 37 authenticated routes x 4 roles
    walked_routes = {(method, path) for method, path, permission in routes(service) if permission != "public"}
    assert ISSUE_12_ROUTES <= walked_routes, ISSUE_12_ROUTES - walked_routes


# the routes issue 12 added last, each walked above with every role
ISSUE_12_ROUTES = {("POST", "/v1/keys/adopt"), ("POST", "/v1/keys/{key}/wrap"), ("POST", "/v1/keys/{key}/unwrap"),
                   ("POST", "/v1/keys/{key}/sign/batch"), ("GET", "/v1/audit/export"),
                   ("GET", "/v1/audit/checkpoints"), ("POST", "/v1/audit/verify"), ("GET", "/v1/whoami")}


def test_public_routes_need_no_token(service):
    publics = sorted(path for _, path, permission in routes(service) if permission == "public")
    assert publics == ["/healthz", "/metrics"]
    for path in publics:
        assert service.get(path).status_code == 200
    assert service.get("/openapi.json").status_code == 200      # the schema, served offline (no docs UI)
    assert service.get("/docs").status_code == 404


def test_auditor_never_uses_keys_and_service_only_its_keys(service):
    admin = bearer(roles=["administrator"])
    for name in ("mine", "theirs"):
        assert service.post("/v1/keys", headers=admin, json={"name": name, "algorithm": "aes-256-gcm",
                                                             "usage": ["encrypt", "decrypt"]}).status_code == 201
    body = {"plaintext": "aGk="}
    r = service.post("/v1/keys/mine/encrypt", headers=bearer(roles=["auditor"]), json=body)
    assert r.status_code == 403
    svc = bearer(sub="app", roles=["service"], keys=["mine"])
    assert service.post("/v1/keys/mine/encrypt", headers=svc, json=body).status_code == 200
    r = service.post("/v1/keys/theirs/encrypt", headers=svc, json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    rid = service.get("/v1/keys/mine", headers=admin).json()["id"]
    assert service.post(f"/v1/keys/{rid}/encrypt", headers=svc, json=body).status_code == 200   # by id too
    nokeys = bearer(sub="app2", roles=["service"])          # no keys claim: no keys
    assert service.post("/v1/keys/mine/encrypt", headers=nokeys, json=body).status_code == 403
    # a service may not manage keys
    assert service.post("/v1/keys/mine/rotate", headers=svc).status_code == 403


def test_whoami_names_the_principal_for_every_role_and_refuses_no_token(service):
    for role in ROLES:
        r = service.get("/v1/whoami", headers={**bearer(sub=f"who-{role}", roles=[role], keys=["k9"], jti="s-1"),
                                                "X-Request-ID": "rid-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["subject"] == f"who-{role}" and body["roles"] == [role] and body["session"] == "s-1"
        assert body["keys"] == (["k9"] if role == "service" else None) and body["request_id"] == "rid-1"
    r = service.get("/v1/whoami")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
