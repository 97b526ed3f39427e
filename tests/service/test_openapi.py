"""The OpenAPI document: every route, examples, documented error statuses; errors in one shape."""

from __future__ import annotations

from fastapi.testclient import TestClient

ROUTES = {
    "/v1/jobs": {"get", "post"},
    "/v1/jobs/{job_id}": {"get", "delete"},
    "/v1/jobs/{job_id}/cancel": {"post"},
    "/v1/jobs/{job_id}/artifacts": {"get"},
    "/v1/jobs/{job_id}/artifacts/{name}": {"get"},
    "/v1/uploads": {"get", "post"},
    "/v1/uploads/{upload_id}": {"get", "delete"},
    "/v1/cost-models": {"get", "post"},
    "/v1/cost-models/{model_id}": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
}


def test_every_route_is_documented_with_its_errors(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path, methods in ROUTES.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), path
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert {"202", "401", "413", "422", "503"} <= set(submit["responses"])
    assert "404" in doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "409" in doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    schemas = doc["components"]["schemas"]
    assert schemas["JobSpec"]["examples"][0]["model"] == {"arch": "mlp"}
    assert schemas["JobPublic"]["examples"][0]["status"] == "running"
    assert "examples" in schemas["CostModelCreate"]


def test_unknown_paths_and_methods_use_the_error_shape(client: TestClient) -> None:
    assert client.get("/v1/nothing").json() == {"detail": "Not Found"}
    response = client.delete("/v1/jobs")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"] == "GET, POST"
