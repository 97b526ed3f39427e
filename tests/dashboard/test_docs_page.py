"""/docs in headless Chromium: Swagger UI from the app's own files renders every operation,
with no request leaving the app and nothing refused by the Content-Security-Policy (the page
fixture fails the test on any console error or external request)."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import Served

pytestmark = pytest.mark.browser


def test_docs_render_offline_under_the_csp(page: Any, served: Served) -> None:
    page.goto("/docs")
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}").first
           ).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/v1/jobs", "/v1/uploads", "/v1/cost-models", "/healthz"} <= {
        p.replace("\u200b", "") for p in paths}
