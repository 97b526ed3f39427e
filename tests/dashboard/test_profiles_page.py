"""The profiles page and the cost model's deployed-error section in headless Chromium."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import Served, screenshot

pytestmark = pytest.mark.browser
HW = {"device": "cpu", "cpu": "AMD EPYC 7B13", "cores": 2, "threads": 1, "gpu": None,
      "gpu_memory_gb": None, "driver": None, "cuda": None, "torch": "2.13.0",
      "kernels": ["csr"]}


def profile_file() -> dict[str, Any]:
    return {"device": "cpu", "unit": "ms", "hardware": HW, "machine": {"batch": 64},
            "layers": [{"name": "fc1", "shape": [256, 64], "kernel": "csr", "samples": [
                {"nnz_blocks": n, "latency": 0.01 + 2e-5 * n} for n in (1000, 8000, 16384)]}]}


def test_profiles_page_follows_a_profile_job(page: Any, served: Served) -> None:
    page.goto("/profiles")
    expect(page.locator("#no-profiles")).to_be_visible()
    with served.client() as client:
        resp = client.post("/v1/profiles", json={"name": "edge-cpu", "model": {"arch": "mlp"},
                                                 "quick": True})
        assert resp.status_code == 202, resp.text
        profile_id = resp.json()["id"]
    tr = page.locator(f'tr[data-profile-id="{profile_id}"]')
    expect(tr.locator(".badge")).to_have_text("Queued")
    expect(tr.locator(".col-name")).to_have_text("edge-cpu")
    expect(tr.locator(".col-structure")).to_have_text("weights")
    # A worker takes it and reports progress layer by layer.
    assert served.store.claim_job(profile_id, "celery@gpu-box", max_attempts=3) is not None
    served.store.heartbeat(profile_id, {"step": 0, "total_steps": 1, "phase": "profiling",
                                        "batch": 64, "layer": "layers.1", "layers_done": 2,
                                        "layers": 3})
    expect(tr.locator(".col-progress")).to_have_text("batch 64: layer 2/3")
    with served.client() as client:
        model = client.post("/v1/cost-models", json={"name": "edge-cpu",
                                                     "profile": profile_file()}).json()
    served.store.finish_job(profile_id, "succeeded", metrics={
        "cost_model_id": model["id"], "hardware": HW,
        "cost_models": [{"batch": 64, "cost_model_id": model["id"]}]})
    expect(tr.locator(".badge")).to_have_text("Succeeded")
    expect(tr.locator(".col-hardware")).to_have_text("AMD EPYC 7B13 · 1 thread · torch 2.13.0")
    screenshot(page, "profiles")
    tr.locator(".col-cost-model a").click()
    expect(page).to_have_url(f"{served.url}/cost-models/{model['id']}")
    expect(page.locator("#cm-meta")).to_contain_text("Version 1 · cpu: AMD EPYC 7B13")


def test_cost_model_page_offers_a_refit_when_deployed_models_miss(page: Any,
                                                                  served: Served) -> None:
    with served.client() as client:
        model = client.post("/v1/cost-models", json={"name": "drifting",
                                                     "profile": profile_file()}).json()
    page.goto(f"/cost-models/{model['id']}")
    expect(page.locator("#cm-deployment")).to_have_text(
        "No trained model was measured against it yet.")
    expect(page.locator("#cm-refit-box")).to_be_hidden()
    # Two deployed models ran 1.6x as slow as predicted (0.01 + 2e-5 x 4000 = 0.09 ms).
    for job in ("a" * 32, "b" * 32):
        served.store.add_deployment_point(model["id"], "default", job, 64, 0.09, 0.144, [
            {"name": "fc1", "nnz_blocks": 4000, "measured": 0.1, "kernel": "csr"}], None)
    page.reload()
    expect(page.locator("#cm-deployment")).to_contain_text("Error on 2 deployed models: 37.5%")
    expect(page.locator("#cm-refit-box")).to_be_visible()
    expect(page.locator("#cm-refit-text")).to_contain_text("off by 38%")
    screenshot(page, "cost-model-refit")
    page.get_by_role("button", name="Refit with these measurements").click()
    expect(page.locator("#cm-meta")).to_contain_text("Version 2")
    expect(page.locator("#cm-deployment")).to_contain_text("Refitted from version 1")
    expect(page.locator("#cm-refit-box")).to_be_hidden()
    assert page.url != f"{served.url}/cost-models/{model['id']}"
