"""No input is a server error: every route of the served OpenAPI schema, with every
role, gets made-up path parameters, query parameters and bodies (values of every JSON
type for each declared property, strings of odd characters, huge numbers, extra
properties, non-JSON bodies); every answer is < 500 and JSON with an error code when
it is an error. (A seeded generator standing in for schemathesis, which is not in this
environment's package list.)"""

import random

from .conftest import bearer

ODD = ["", "k1", "a" * 300, "../../etc", "%00", "\u00e9\u4e2d", "ferrohsm:v1:AAAA", "ferrohsm:v99999999999:AA==",
       "-1", "0", "1e309", "null", "00000000-0000-0000-0000-000000000000", " k1 ", "k@v1", "a/b"]


def values(rng):
    return rng.choice([None, True, False, 0, -1, 1, 2**63, 1.5, rng.choice(ODD), [], [rng.choice(ODD)], {},
                       {"x": 1}, ["encrypt", "decrypt"], "aGk=", "***"])


def body_for(rng, schema, op):
    ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}))
    name = ref.get("$ref", "").rsplit("/", 1)[-1]
    props = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
    body = {p: values(rng) for p in props if rng.random() < 0.8}
    if rng.random() < 0.1:
        body["extra"] = 1
    return body


def test_no_input_is_a_server_error(service):
    admin = bearer(roles=["administrator"])
    service.post("/v1/keys", headers=admin, json={"name": "k1", "algorithm": "aes-256-gcm",
                                                  "usage": ["encrypt", "decrypt"]})
    service.post("/v1/keys", headers=admin, json={"name": "s1", "algorithm": "ec-p256", "usage": ["sign", "verify"]})
    schema = service.get("/openapi.json").json()
    rng = random.Random(12)
    tokens = {role: bearer(sub=f"fuzz-{role}", roles=[role], keys=["k1", "s1"])
              for role in ("administrator", "operator", "auditor", "service")}
    sent = 0
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            params = [p for p in op.get("parameters", []) if p["in"] == "query"]
            for role, headers in tokens.items():
                for _ in range(12):
                    url = path
                    for part in ("{key}", "{version}", "{approval_id}", "{name}"):
                        url = url.replace(part, rng.choice(["k1", "s1", "1", "2"] + ODD[:4] + ODD[5:]) or "x")
                    query = {p["name"]: str(values(rng)) for p in params if rng.random() < 0.5}
                    if rng.random() < 0.1:
                        r = service.request(method.upper(), url, headers={**headers, "Content-Type":
                                            "application/json"}, params=query, content=b"\xff{[")
                    else:
                        r = service.request(method.upper(), url, headers=headers, params=query,
                                            json=body_for(rng, schema, op))
                    sent += 1
                    assert r.status_code < 500, (method, url, query, r.status_code, r.text)
                    if r.status_code >= 400:
                        assert r.json()["error"]["code"], r.text
    assert sent >= 31 * 4 * 12
