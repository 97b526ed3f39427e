"""The dashboard's exploration views in headless Chromium: the sweep page (frontier, dense,
links), the compare view, sorting and filtering the job list, chart hover / zoom / log scale /
smoothing, and the job log. Screenshots go to test-artifacts/screenshots."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import Served, open_page, screenshot, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A store of its own: the page tests elsewhere start from an empty job list.
    yield from serve(tmp_path_factory.mktemp("explore"))


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    yield from open_page(browser, served)


def finish(served: Served, job_id: str, accuracy: float, ms: float, dense_ms: float = 4.0
           ) -> None:
    """A worker's leavings: report (accuracy, measured latency), curve, then the record."""
    report = {"accuracy": {"dense": 0.975, "sparse": accuracy, "final": accuracy},
              "speedup": {"unit": "ms", "batches": [{"batch": 64, "dense_ms": dense_ms,
                                                     "sparse_ms": ms}]},
              "sparsity": {"density": 0.1, "layers": []}}
    served.artifacts.write_bytes(job_id, "report.json", json.dumps(report).encode())
    served.start(job_id)
    served.write_metrics(job_id, range(1, 101))
    assert served.store.finish_job(job_id, "succeeded",
                                   progress={"step": 100, "total_steps": 100})


def test_sweep_page_draws_the_frontier(page: Any, served: Served) -> None:
    with served.client() as client:
        resp = client.post("/v1/sweeps", json={
            "name": "digits frontier", "spec": {"training": {"epochs": 1}},
            "budgets": [0.05, 0.1, 0.2, 0.4, 0.6]})
        assert resp.status_code == 202, resp.text
        sweep = resp.json()
    ids = [p["job_id"] for p in sweep["points"]]
    page.goto(f"/sweeps/{sweep['id']}")
    expect(page.locator("#sweep-status .badge")).to_have_text("Queued")
    expect(page.locator("#chart-frontier")).to_contain_text("No measured points yet.")
    # (accuracy, ms): budget 0.4 is slower and less accurate than 0.2, so off the frontier.
    for job_id, (acc, ms) in zip(ids[:4], [(0.90, 1.0), (0.94, 1.6), (0.96, 2.2), (0.95, 2.9)],
                                 strict=True):
        finish(served, job_id, acc, ms)
    expect(page.locator("#sweep-status .badge")).to_have_text("Running")
    chart = page.locator("#chart-frontier")
    expect(chart.locator("a.point circle")).to_have_count(4)
    expect(chart.locator("a.point circle.on-frontier")).to_have_count(3)
    expect(chart.locator("path.frontier")).to_have_attribute(
        "d", re.compile(r"^M[^L]*L[^L]*L[^L]*$"))  # through the three frontier points
    expect(chart.locator("a.point rect.dense-mark")).to_have_count(1)  # from the reports: 4 ms
    expect(page.locator("#dense-note")).to_contain_text("97.5%")
    expect(page.locator("#points tbody tr.frontier-row")).to_have_count(3)
    expect(page.locator(f'#points tr[data-job-id="{ids[3]}"]')).not_to_have_class("frontier-row")

    # Hover shows the point's figures; a point links to its job.
    chart.locator("a.point").nth(1).hover()
    tip = chart.locator(".chart-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("accuracy 94%")
    expect(tip).to_contain_text("measured 1.6 ms")
    screenshot(page, "sweep-frontier")

    finish(served, ids[4], 0.97, 3.5)
    expect(page.locator("#sweep-status .badge")).to_have_text("Succeeded")
    expect(chart.locator("a.point circle.on-frontier")).to_have_count(4)
    expect(page.locator("#cancel-sweep")).to_be_hidden()

    # Log scale and zoom keep working on the scatter.
    chart.get_by_label("log scale").check()
    expect(chart.locator("svg.chart")).to_contain_text("(log)")
    chart.get_by_label("log scale").uncheck()
    box = chart.locator("svg.chart").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    expect(chart.locator(".zoom-reset")).to_be_visible()
    chart.locator(".zoom-reset").click()
    expect(chart.locator(".zoom-reset")).to_be_hidden()

    chart.locator("a.point").first.click()
    expect(page).to_have_url(re.compile(f"/jobs/{ids[0]}$"))
    expect(page.locator("#job-sweep")).to_contain_text(f"sweep {sweep['id'][:8]}")
    expect(page.locator("#report-table")).to_contain_text("Measured speedup")
    expect(page.locator("#report-table")).to_contain_text("4×")  # 4 ms dense, 1 ms sparse


def test_cancel_sweep_from_its_page(page: Any, served: Served) -> None:
    with served.client() as client:
        sweep = client.post("/v1/sweeps", json={"spec": {"training": {"epochs": 1}},
                                                "budgets": [0.1, 0.2]}).json()
    page.goto(f"/sweeps/{sweep['id']}")
    page.get_by_role("button", name="Cancel sweep").click()
    page.get_by_role("button", name="Confirm cancel sweep").click()
    expect(page.locator("#sweep-status .badge")).to_have_text("Cancelled")
    for p in sweep["points"]:
        assert served.store.get_job(p["job_id"]).status == "cancelled"  # type: ignore[union-attr]


def test_job_list_sorts_filters_and_opens_compare(page: Any, served: Served) -> None:
    made = {}
    for name, acc, ms, tags in [("list-a", 0.91, 2.0, ["team-x"]), ("list-b", 0.97, 3.0, []),
                                ("list-c", 0.85, 1.0, ["team-x", "fast"])]:
        made[name] = served.new_job(name=name, tags=tags)
        finish(served, made[name], acc, ms)
    page.goto("/")
    table = page.locator("#jobs")
    for job_id in made.values():
        expect(table.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(1)
    expect(table.locator(f'tr[data-job-id="{made["list-b"]}"] .col-accuracy')).to_have_text("97%")
    expect(table.locator(f'tr[data-job-id="{made["list-c"]}"] .col-latency')).to_have_text("1 ms")

    def order() -> list[str]:
        names = table.locator("tbody tr:visible .col-name a").all_inner_texts()
        return [n for n in names if n.startswith("list-")]

    sort_acc = table.get_by_role("button", name="Accuracy")
    sort_acc.click()
    expect(table.locator('th[data-sort="accuracy"]')).to_have_attribute("aria-sort", "ascending")
    assert order() == ["list-c", "list-a", "list-b"]
    sort_acc.click()
    assert order() == ["list-b", "list-a", "list-c"]
    table.get_by_role("button", name="Latency").click()
    assert order() == ["list-c", "list-a", "list-b"]
    page.wait_for_timeout(2300)  # a poll in between keeps the order
    assert order() == ["list-c", "list-a", "list-b"]

    page.get_by_label("Name or tag").fill("team-x")
    assert order() == ["list-c", "list-a"]
    page.get_by_label("Accuracy at least (%)").fill("90")
    assert order() == ["list-a"]
    page.get_by_label("Name or tag").fill("")
    page.get_by_label("Latency at most (ms)").fill("2.5")
    assert order() == ["list-a"]
    page.get_by_label("Accuracy at least (%)").fill("")
    assert order() == ["list-c", "list-a"]
    page.get_by_label("Latency at most (ms)").fill("")
    screenshot(page, "job-list-sorted")

    compare = page.locator("#compare")
    expect(compare).to_be_disabled()
    page.get_by_label("Select list-a to compare").check()
    page.get_by_label("Select list-b to compare").check()
    expect(compare).to_have_text("Compare selected (2)")
    compare.click()
    expect(page).to_have_url(re.compile(r"/compare\?ids="))
    expect(page.locator("#chart-loss path.series")).to_have_count(2)


def test_compare_overlays_curves_and_highlights_differences(page: Any, served: Served) -> None:
    a = served.new_job(name="cmp-spartan", sparsity={"method": "spartan", "budget": 0.1})
    b = served.new_job(name="cmp-imp", sparsity={"method": "imp", "budget": 0.3})
    finish(served, a, 0.95, 1.0)
    finish(served, b, 0.93, 2.0)
    page.goto(f"/compare?ids={a},{b}")
    for chart in ("loss", "accuracy", "budget", "beta"):
        expect(page.locator(f"#chart-{chart} path.series")).to_have_count(2)
    expect(page.locator("#chart-loss .legend")).to_contain_text("cmp-imp")
    table = page.locator("#spec-table")
    expect(table.locator("thead th")).to_have_count(3)
    expect(table.locator('tr[data-field="sparsity.method"]')).to_have_class("differs")
    expect(table.locator('tr[data-field="sparsity.budget"] td')).to_have_text(["0.1", "0.3"])
    expect(table.locator('tr[data-field="result.accuracy"]')).to_have_class("differs")
    expect(table.locator('tr[data-field="model.arch"]')).not_to_have_class("differs")
    screenshot(page, "compare")
    page.get_by_label("only what differs").check()
    expect(table.locator('tr[data-field="model.arch"]')).to_have_count(0)
    expect(table.locator('tr[data-field="sparsity.method"]')).to_have_count(1)


def test_chart_hover_zoom_log_and_smoothing(page: Any, served: Served) -> None:
    job_id = served.new_job(name="interactive")
    finish(served, job_id, 0.95, 1.0)
    page.goto(f"/jobs/{job_id}")
    chart = page.locator("#chart-loss")
    loss = chart.locator('path.series[data-label="loss"]')
    expect(loss).to_have_attribute("d", re.compile(r"^M[^L]*(L[^L]*){99}$"))  # steps 1..100
    svg = chart.locator("svg.chart")
    box = svg.bounding_box()
    # Hover at the middle of the plot: the tooltip names the step and the value there.
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.5)
    tip = chart.locator(".chart-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(re.compile(r"step \d+"))
    expect(tip).to_contain_text(re.compile(r"loss \d"))
    screenshot(page, "chart-hover")

    # Drag from ~25% to ~50% of the steps: fewer points drawn, reset restores them.
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    reset = chart.get_by_role("button", name="Reset zoom of Loss")
    expect(reset).to_be_visible()
    segments = (loss.get_attribute("d") or "").count("L")
    assert 10 < segments < 60, segments
    reset.click()
    expect(loss).to_have_attribute("d", re.compile(r"^M[^L]*(L[^L]*){99}$"))

    chart.get_by_label("log scale").check()
    expect(svg).to_contain_text("loss (log)")
    screenshot(page, "chart-log")
    chart.get_by_label("log scale").uncheck()

    # Smoothing: the raw curve stays, faint, behind the smoothed one on every chart.
    page.get_by_label("Smoothing").focus()
    page.keyboard.press("End")  # by keyboard, as a range input is used without a mouse
    expect(page.locator("#smoothing-value")).to_have_text("0.99")
    expect(chart.locator("path.raw")).to_have_count(2)  # loss and val loss
    expect(page.locator("#chart-accuracy path.raw")).to_have_count(2)
    assert loss.get_attribute("d") != chart.locator("path.raw").first.get_attribute("d")
    screenshot(page, "chart-smoothed")


def test_job_page_shows_the_log(page: Any, served: Served) -> None:
    job_id = served.new_job(name="logged")
    served.start(job_id)
    served.store.append_logs(job_id, 1, [
        {"level": "INFO", "logger": "spartan_service.worker.runner",
                         "message": "job started: attempt 1"},
        {"level": "WARNING", "logger": "spartan_service.worker.data",
                         "message": "few examples per class"}])
    page.goto(f"/jobs/{job_id}")
    log = page.get_by_label("Job log")
    expect(log).to_contain_text("job started: attempt 1")
    expect(log.locator(".level-warning")).to_have_text(re.compile("few examples per class"))
    served.store.append_logs(job_id, 1, [{"level": "ERROR", "logger": "worker.runner",
                                          "message": "job failed\nTraceback (most recent call "
                                          "last):\n  File \"x.py\"\nValueError: boom"}])
    served.store.finish_job(job_id, "failed", error="ValueError: boom")
    expect(page.locator("#job-status .badge")).to_have_text("Failed")
    expect(log.locator(".level-error")).to_contain_text("ValueError: boom")
    expect(log.locator(".level-error")).to_contain_text("Traceback")
    screenshot(page, "job-log")
