"""schemathesis over the OpenAPI schema the running service serves (real uvicorn), every
operation with a bearer token of every role: no response is a server error, and every
error is JSON with a stable code. Seeded (derandomized) so a failure reproduces."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from .conftest import bearer

ROLES = ("administrator", "operator", "auditor", "service")
EXAMPLES = 25


@pytest.mark.parametrize("role", ROLES)
def test_no_server_errors_for_any_role(service, role):
    h = bearer(roles=("administrator",))
    assert service.post("/v1/keys", headers=h, json={"name": "k1", "algorithm": "aes-256-gcm",
                                                     "usage": ["encrypt", "decrypt"]}).status_code == 201
    schema = schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    served = service.get("/openapi.json").json()["paths"]
    assert len(operations) == sum(len(methods) for methods in served.values()) >= 15
    seen = []

    for op in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(base_url=str(service.base_url), timeout=10,
                                 headers=bearer(sub=f"fuzz-{role}", roles=(role,), keys=["k1"]))
            seen.append((op.label, response.status_code))
            assert response.status_code < 500, (op.label, case.path_parameters, case.query, response.text[:300])
            if response.status_code >= 400 and response.status_code != 304:
                body = json.loads(response.text)
                assert isinstance(body["error"]["code"], str), (op.label, response.text[:300])
                assert "Traceback" not in response.text
        run()
    assert len({label for label, _ in seen}) == len(operations)
