"""Schemathesis against the ASGI app: requests generated from the app's own OpenAPI document,
valid and invalid, with tokens off and on. No response may be a 5xx, and every response must be
one the document declares (status code, content type, body schema); invalid requests must be
refused.

Bounded and repeatable: a few examples per operation and generation mode, derandomised, no
shrinking, no example database. (Schemathesis' pytest integration, `schema.parametrize()`,
does not run under pytest 9, so the operations are driven through Hypothesis directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from spartan_service.jobs.settings import Settings
from spartan_service.service.main import create_app

TOKEN = "s3cret-token-for-tests"
EXAMPLES = 10  # per operation and generation mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
METHODS = {"get", "post", "put", "patch", "delete"}


def make_app(data_dir: Path, tokens: bool) -> Any:
    return create_app(Settings(data_dir=data_dir, database_url=None, broker_url=None,
                               api_tokens=f"team:{TOKEN}" if tokens else None))


def operations() -> list[tuple[str, str]]:
    # Reading the document touches neither the store nor the broker (built lazily).
    doc = make_app(Path("unused"), tokens=False).openapi()
    return [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m in METHODS]


@pytest.mark.parametrize(("method", "path"), operations())
@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_operation_answers_as_documented(method: str, path: str, tokens: bool,
                                         tmp_path: Path) -> None:
    app = make_app(tmp_path, tokens)
    try:
        operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
        auth = {"Authorization": f"Bearer {TOKEN}"} if tokens else {}
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        calls = []

        @given(case=cases)
        @settings(max_examples=2 * EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            calls.append(case.call_and_validate(headers=auth, checks=CHECKS).status_code)

        run()
        assert calls, "no request was generated"  # (an operation without inputs has one)
    finally:
        app.state.resources.close()


# --- strings and numbers that cannot be stored and served ----------------------------------
# Schemathesis draws from the document's types; JSON's NaN and Infinity literals, 1e400 (which
# Python's parser turns into inf), lone surrogates (valid \u escapes, invalid Unicode), NUL
# and integers past 64 bits are outside them. Each is put at a drawn place of a valid body,
# sent as raw JSON text, and must be refused with a 4xx; the lists still answer 200 after.

BAD_JSON = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(10**30), str(-(10**30)),
            '"\\ud800"', '"a\\udfffb"', '"nul\\u0000"', '"' + "x" * 5000 + '"']
JOB = {"name": "n", "tags": ["t"], "model": {"arch": "mlp", "kwargs": {"hidden": [8]}},
       "data": {"dataset": "digits", "val_fraction": 0.2},
       "sparsity": {"method": "spartan", "budget": 0.1, "beta_init": 1.0},
       "training": {"epochs": 1, "lr": 0.01, "seed": 1, "weight_decay": 0.0}}
PROFILE_BODY = {"name": "m", "profile": {"device": "cpu", "unit": "ms", "layers": [
    {"name": "fc1", "shape": [64, 32], "block": [1, 1], "samples": [
        {"nnz_blocks": n, "latency": 0.01 + 1e-5 * n} for n in (100, 500, 1000, 2048)]}]}}


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _with_marker(body: Any, path: tuple[Any, ...]) -> Any:
    import copy

    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@BAD@@"
    return out


@pytest.mark.parametrize(("route", "body"), [("/v1/jobs", JOB),
                                             ("/v1/cost-models", PROFILE_BODY)])
def test_unservable_strings_and_numbers_are_refused(route: str, body: dict[str, Any],
                                                    tmp_path: Path) -> None:
    import json

    from fastapi.testclient import TestClient

    app = make_app(tmp_path, tokens=False)
    try:
        client = TestClient(app)
        assert client.post(route, json=body).status_code in (201, 202)  # the body is valid
        leaves = _leaves(body)

        @given(path=st.sampled_from(leaves), bad=st.sampled_from(BAD_JSON))
        @settings(max_examples=3 * EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(path: tuple[Any, ...], bad: str) -> None:
            text = json.dumps(_with_marker(body, path)).replace('"@@BAD@@"', bad)
            response = client.post(route, content=text.encode(),
                                   headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (path, bad, response.text)
            assert response.json()["detail"]  # the error shape, itself serialisable

        run()
        for listing in ("/v1/jobs", "/v1/cost-models", "/v1/uploads"):
            assert client.get(listing).status_code == 200, listing
        assert client.get(route).json()["count"] == 1  # only the valid one was stored
    finally:
        app.state.resources.close()
