"""The dashboard in headless Chromium: live job list, job page charts, cancel, errors, tokens."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import Served, screenshot

pytestmark = pytest.mark.browser


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tr[data-job-id="{job_id}"]')


def test_job_list_updates_without_reload(page: Any, served: Served) -> None:
    page.goto("/")
    expect(page.locator("#job-count")).to_have_text("0 jobs")
    expect(page.locator("#no-jobs")).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    # Submitted over REST after the page is open: appears by polling.
    with served.client() as client:
        resp = client.post("/v1/jobs", json={
            "name": "digits-10pct", "model": {"arch": "mlp"}, "data": {"dataset": "digits"},
            "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 2}})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
    tr = row(page, job_id)
    expect(tr.locator(".badge")).to_have_text("Queued")
    expect(tr.locator(".col-name a")).to_have_text("digits-10pct")
    expect(tr.locator(".col-method")).to_have_text("spartan")
    expect(tr.locator(".col-budget")).to_have_text("10%")
    expect(tr.locator(".col-model")).to_have_text("mlp")
    expect(tr.locator(".col-dataset")).to_have_text("digits")

    # A worker claims it and reports progress: status, bar, ETA and worker move.
    served.start(job_id, total_steps=200)
    served.progress(job_id, 30, total_steps=200, eta_s=95)
    bar = tr.locator('[role="progressbar"]')
    expect(tr.locator(".badge")).to_have_text("Running")
    expect(bar).to_have_attribute("aria-valuenow", "15")
    expect(tr.locator(".bar-text")).to_contain_text("ETA 1m 35s")
    expect(tr.locator(".col-where")).to_have_text("cpucelery@test-host")  # device, then worker
    served.progress(job_id, 150, total_steps=200, eta_s=20)
    expect(bar).to_have_attribute("aria-valuenow", "75")
    screenshot(page, "job-list-running")

    served.store.finish_job(job_id, "succeeded", progress={"step": 200, "total_steps": 200})
    expect(tr.locator(".badge")).to_have_text("Succeeded")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(tr.locator("button")).to_be_hidden()

    # The status filter asks the API for that status only.
    page.get_by_label("Status").select_option("running")
    expect(tr).to_have_count(0)
    page.get_by_label("Status").select_option("succeeded")
    expect(tr).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True


def test_cancel_from_list_and_job_page(page: Any, served: Served) -> None:
    queued = served.new_job(name="to-cancel")
    page.goto("/")
    tr = row(page, queued)
    # By keyboard: the first Enter only arms the button; the job is untouched until confirmed.
    tr.get_by_role("button", name="Cancel job to-cancel").focus()
    page.keyboard.press("Enter")
    confirm = tr.get_by_role("button", name="Confirm: Cancel job to-cancel")
    expect(confirm).to_be_focused()
    page.wait_for_timeout(2200)  # a poll of the list in between keeps the row and the focus
    expect(confirm).to_be_focused()
    job = served.store.get_job(queued)
    assert job is not None and job.status == "queued"
    page.keyboard.press("Enter")
    expect(tr.locator(".badge")).to_have_text("Cancelled")
    job = served.store.get_job(queued)
    assert job is not None and job.status == "cancelled"

    running = served.new_job(name="running-cancel")
    served.start(running)
    served.progress(running, 10)
    page.goto(f"/jobs/{running}")
    expect(page.locator("#job-status .badge")).to_have_text("Running")
    page.get_by_role("button", name="Cancel this job").click()
    page.get_by_role("button", name="Confirm: Cancel this job").click()
    expect(page.locator("#cancel")).to_have_text("Cancelling…")
    job = served.store.get_job(running)
    assert job is not None and job.cancel_requested
    # Until its worker stops, the list shows the request too.
    page.goto("/")
    expect(row(page, running).get_by_role("button")).to_have_text("Cancelling…")
    expect(row(page, running).get_by_role("button")).to_be_disabled()
    # The worker notices at its next heartbeat and stops.
    assert served.store.heartbeat(running, {"step": 11, "total_steps": 100}) is True
    served.store.finish_job(running, "cancelled")
    expect(row(page, running).locator(".badge")).to_have_text("Cancelled")
    expect(row(page, running).get_by_role("button")).to_be_hidden()


def report(layers: list[tuple[str, float, float, float]]) -> dict[str, Any]:
    """report.json in the worker's shape (jobs/report.py, written by worker/publish.py): per layer
    (name, kept_fraction, kept_cost, cost)."""
    kept = sum(k for _, _, k, _ in layers)
    dense = sum(c for *_, c in layers)
    return {
        "sparsity": {"method": "spartan", "density": 0.1, "measured_density": 0.0998,
                     "layers": [{"name": n, "kept_fraction": f, "kept_cost": k, "cost": c}
                                for n, f, k, c in layers]},
        "cost": {"kind": "params", "unit": "params", "budget": 2000.0, "predicted": kept,
                 "dense": dense, "within_budget": True},
        "accuracy": {"dense": 0.97, "sparse": 0.955, "final": 0.955,
                     "dense_source": "the initial weights (model.weights) before sparse training"},
    }


def test_job_page_draws_live_charts_report_and_artifacts(page: Any, served: Served) -> None:
    job_id = served.new_job(name="charts")
    served.start(job_id, total_steps=100)
    served.write_metrics(job_id, range(1, 41))
    served.progress(job_id, 40, eta_s=12, epochs=2, loss=0.52, accuracy=0.81,
                    budget_fraction=0.28, beta=8.6)
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("#job-now")).to_have_text(
        "Now: epoch 1/2 · loss 0.52 · accuracy 81% · budget 28% · beta 8.6")
    expect(page.locator("#summary")).to_contain_text("spartan")
    for chart in ("loss", "accuracy", "budget", "beta"):
        expect(page.locator(f"#chart-{chart} path.series").first).to_be_visible()
    loss = page.locator('#chart-loss path[data-label="loss"]')
    assert (loss.get_attribute("d") or "").count("L") == 39  # a segment per step after the first
    expect(page.locator("#chart-accuracy path.series")).to_have_count(1)  # no epoch ended yet

    # More steps logged, two epochs ended: the charts grow without a reload, and validation
    # accuracy (from the epoch records) joins the training accuracy.
    served.write_metrics(job_id, range(41, 101))
    served.progress(job_id, 100, eta_s=0)
    expect(loss).to_have_attribute("d", re.compile(r"^M[^L]*(L[^L]*){99}$"))
    expect(page.locator("#chart-accuracy path.series")).to_have_count(2)
    expect(page.locator("#chart-accuracy .legend")).to_contain_text("val accuracy")
    expect(page.locator('#chart-accuracy path[data-label="val accuracy"]')).to_have_attribute(
        "d", re.compile(r"^M[^L]*L[^L]*$"))  # two epochs: two points
    screenshot(page, "job-page-running")

    layers = [("fc1", 0.08, 1310.0, 16384.0), ("fc2", 0.2, 650.0, 3250.0),
              ("fc3", 0.5, 40.0, 80.0)]
    served.artifacts.write_bytes(job_id, "report.json", json.dumps(report(layers)).encode())
    served.artifacts.write_bytes(job_id, "model.safetensors", b"\0" * 2048)
    served.store.finish_job(job_id, "succeeded", progress={"step": 100, "total_steps": 100})
    expect(page.locator("#job-status .badge")).to_have_text("Succeeded")
    expect(page.locator("#chart-kept rect.fill")).to_have_count(3)
    widths = [float(page.locator("#chart-kept rect.fill").nth(i).get_attribute("width") or 0)
              for i in range(3)]
    assert widths[0] < widths[1] < widths[2]  # bars scale with the kept fraction
    expect(page.locator("#chart-cost .marker")).to_have_count(1)  # the budget line
    report_table = page.locator("#report-table")
    expect(report_table).to_contain_text("97%")
    expect(report_table).to_contain_text("95.5%")
    expect(report_table).to_contain_text("2000 params (within)")
    expect(page.locator("#report-note")).to_contain_text("initial weights")
    expect(page.locator("#artifacts")).to_contain_text("model.safetensors")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download report.json").click()
    assert json.loads(open(info.value.path()).read())["accuracy"]["sparse"] == 0.955
    screenshot(page, "job-page-succeeded")


def test_job_page_names_the_tasks_own_metric(page: Any, served: Served) -> None:
    """A causal-LM job: perplexity (lower is better) in the live line, the chart and the
    report, not a percentage called accuracy."""
    spec = {"model": {"arch": "hf:org/gpt2-tiny"},
            "data": {"dataset": "hf", "kwargs": {"path": "/data/t.parquet"}},
            "training": {"task": "causal_lm", "epochs": 2}}
    job_id = served.new_job(name="lm", **spec)
    served.start(job_id, total_steps=4)
    lines = [{"kind": "step", "step": s, "epoch": 1, "loss": 3.0 - s / 4, "accuracy": 20.0 - s,
              "perplexity": 20.0 - s, "lr": 1e-3} for s in range(1, 5)]
    lines.append({"kind": "epoch", "step": 4, "epoch": 1, "loss": 2.2, "accuracy": 17.0,
                  "perplexity": 17.0, "val_loss": 2.4, "val_accuracy": 18.5,
                  "val_perplexity": 18.5})
    served.artifacts.write_bytes(job_id, "metrics.jsonl",
                                 "".join(json.dumps(r) + "\n" for r in lines).encode())
    served.progress(job_id, 4, total_steps=4, metric="perplexity", loss=2.2, accuracy=17.0,
                    perplexity=17.0, val_perplexity=18.5, val_accuracy=18.5)
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("#job-now")).to_contain_text("perplexity 17 · val perplexity 18.5")
    expect(page.locator("#h-acc")).to_have_text("Perplexity")
    expect(page.locator("#chart-accuracy .legend")).to_contain_text("val perplexity")
    rep = {"sparsity": {"method": "spartan", "density": 0.5, "measured_density": 0.5,
                        "layers": []},
           "cost": {"kind": "params", "unit": "params", "budget": 10.0, "predicted": 9.0,
                    "dense": 20.0, "within_budget": True},
           "accuracy": {"dense": 25.5, "sparse": 18.5, "final": 18.5, "metric": "perplexity",
                        "higher_is_better": False, "baseline": "evaluate",
                        "dense_source": "the initial weights (pretrained, or model.weights) "
                        "before sparsifying (baseline 'evaluate')"}}
    served.artifacts.write_bytes(job_id, "report.json", json.dumps(rep).encode())
    served.store.finish_job(job_id, "succeeded", progress={"step": 4, "total_steps": 4})
    table = page.locator("#report-table")
    expect(table).to_contain_text("Perplexity (lower is better)")
    expect(table).to_contain_text("25.5")
    expect(page.locator("#report-note")).to_contain_text("Dense perplexity: the initial weights")
    screenshot(page, "job-page-perplexity")


def test_failed_job_shows_its_error(page: Any, served: Served) -> None:
    job_id = served.new_job(name="broken")
    served.start(job_id)
    served.store.finish_job(job_id, "failed", error="ValueError: model factory 'mlp' raised: boom")
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("#job-status .badge")).to_have_text("Failed")
    expect(page.get_by_role("alert").filter(has_text="boom")).to_be_visible()
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#chart-kept")).to_have_text("No report: the job failed.")
    expect(page.locator("#chart-loss")).to_have_text("Nothing was logged.")
    screenshot(page, "job-page-failed")
    page.goto("/?status=failed")
    expect(row(page, job_id).locator(".badge")).to_have_text("Failed")
    expect(page.get_by_label("Status")).to_have_value("failed")


def test_cost_model_page_draws_measured_and_fitted(page: Any, served: Served) -> None:
    sizes = (500, 1000, 2000, 4000, 6000, 8000, 12000, 16384)
    profile = {"device": "cpu", "unit": "ms", "layers": [
        {"name": name, "shape": [256, 64], "block": [1, 1], "samples": [
            {"nnz_blocks": n, "latency": 0.01 + slope * n * (1.05 if i % 2 else 0.95)}
            for i, n in enumerate(sizes)]}
        for name, slope in (("fc1", 1.2e-5), ("fc2", 2e-5))]}
    with served.client() as client:  # fitted by the API, as a user would
        resp = client.post("/v1/cost-models", json={"name": "cpu-mlp", "profile": profile})
        assert resp.status_code == 201, resp.text
        fitted = resp.json()
    page.goto(f"/cost-models/{fitted['id']}")
    expect(page.locator("h1")).to_have_text("cpu-mlp")
    expect(page.locator("#cm-charts section")).to_have_count(2)
    expect(page.locator("#cm-charts circle.sample")).to_have_count(16)
    expect(page.locator("#cm-charts line.fitted")).to_have_count(2)
    fc1 = fitted["data"]["layers"]["fc1"]
    cells = page.locator("#cm-table tbody tr").first.locator("td")
    expect(cells.nth(3)).to_have_text(str(round(fc1["r2"], 3)).rstrip("0"))
    expect(cells.nth(4)).to_have_text(re.compile(r"^\d+(\.\d+)?%$"))
    expect(page.locator("#cm-warnings")).to_be_hidden()  # a good fit: nothing flagged
    screenshot(page, "cost-model")
    noisy = json.loads(json.dumps(profile))
    for i, sample in enumerate(noisy["layers"][0]["samples"]):
        sample["latency"] *= (1, 3, 0.3, 2)[i % 4]
    with served.client() as client:
        poor = client.post("/v1/cost-models", json={"name": "noisy", "profile": noisy}).json()
    page.goto(f"/cost-models/{poor['id']}")
    expect(page.locator("#cm-warnings")).to_contain_text("layer fc1: held-out error")
    page.goto("/")
    page.get_by_role("link", name="cpu-mlp").click()
    expect(page).to_have_url(f"{served.url}/cost-models/{fitted['id']}")


def test_tokens_prompt_once_and_scope_to_tenant(token_page: Any, served_tokens: Served) -> None:
    page = token_page
    mine = served_tokens.new_job(tenant="alice", name="alice-job")
    theirs = served_tokens.new_job(tenant="bob", name="bob-job")
    page.goto("/")
    token = page.get_by_label("API token")
    expect(token).to_be_focused()
    screenshot(page, "tokens-prompt")
    token.fill("wrong-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-message")).to_have_text("That token was refused; enter another.")
    token.fill("token-alice")
    page.get_by_role("button", name="Sign in").click()
    expect(row(page, mine)).to_have_count(1)
    expect(page.locator("#token-form")).to_be_hidden()
    expect(row(page, theirs)).to_have_count(0)
    screenshot(page, "tokens-signed-in")

    # Kept for the browser session: other pages do not ask again.
    served_tokens.artifacts.write_bytes(mine, "report.json", b'{"layers": []}')
    served_tokens.store.finish_job(mine, "succeeded")
    page.goto(f"/jobs/{mine}")
    expect(page.locator("#job-status .badge")).to_have_text("Succeeded")
    expect(page.locator("#token-form")).to_be_hidden()
    with page.expect_download() as info:  # the download carries the bearer token
        page.get_by_role("link", name="Download report.json").click()
    assert open(info.value.path()).read() == '{"layers": []}'
    page.goto(f"/jobs/{theirs}")
    expect(page.locator("h1")).to_have_text("Job not found")

    page.get_by_role("button", name="Forget token").click()
    expect(page.get_by_label("API token")).to_be_visible()


def test_job_page_says_when_the_latency_promise_was_missed(page: Any, served: Served) -> None:
    job_id = served.new_job(name="promise")
    served.start(job_id, total_steps=10)
    rep = report([("fc1", 0.5, 1.0, 2.0)])
    note = ("Promise not kept: 1.4 ms measured at batch 64 is 40% over the promised 1 ms "
            "(the limit is 15%), because the cost model predicted 0.98 ms, +43% off the "
            "measurement.")
    rep["latency"] = {"unit": "ms", "device": "cpu", "batch_size": 64, "dense_measured": 2.0,
                      "sparse_measured": 1.4, "predicted": 0.98, "promised": 1.0,
                      "kept": False, "measured_vs_promised": 1.4, "note": note}
    served.artifacts.write_bytes(job_id, "report.json", json.dumps(rep).encode())
    served.store.finish_job(job_id, "succeeded", progress={"step": 10, "total_steps": 10})
    page.goto(f"/jobs/{job_id}")
    box = page.locator("#latency-note")
    expect(box).to_have_text(note)
    expect(box).to_have_class("warning-box")
    expect(page.locator("#report-table")).to_contain_text("1 ms (missed)")
    expect(page.locator("#report-table")).to_contain_text("95.5%")  # dense vs sparse accuracy


def test_the_header_marks_the_page_shown(page: Any, served: Served) -> None:
    nav = page.locator("header.top")
    for path, current in (("/", "All jobs"), ("/profiles", "Profiles"), ("/compare", None)):
        page.goto(path)
        marked = nav.locator('[aria-current="page"]')
        if current is None:
            expect(marked).to_have_count(0)
        else:
            expect(marked).to_have_text(current)
