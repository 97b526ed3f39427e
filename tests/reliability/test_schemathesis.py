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

from jobs.settings import Settings
from service.main import create_app

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
