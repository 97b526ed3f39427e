"""The dashboard's routes without a browser: pages, static files, and the metrics API."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.service.routes.dashboard import PAGES_DIR, STATIC_DIR
from tests.dashboard.conftest import TOKENS, build_app

SPEC = {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
        "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 1}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, JobStore, ArtifactStore]]:
    settings = Settings(data_dir=tmp_path, api_tokens=TOKENS)
    with TestClient(build_app(settings)) as client:
        store = JobStore(settings.db_url)
        yield client, store, ArtifactStore(settings.artifacts_dir)
        store.close()


ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}


def lines(*records: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_metrics_since_limit_and_resumed_steps(env: tuple[TestClient, JobStore, ArtifactStore]
                                               ) -> None:
    client, store, artifacts = env
    job = store.create_job("alice", SPEC, "cpu", None)
    url = f"/v1/jobs/{job.id}/metrics"
    assert client.get(url, headers=ALICE).json() == {"data": [], "count": 0}

    step = [{"kind": "step", "step": s, "loss": 1.0 / s} for s in range(1, 7)]
    epoch = {"kind": "epoch", "step": 4, "val_accuracy": 0.5}
    redone = {"kind": "step", "step": 3, "loss": 9.0}  # a resumed run logs step 3 again
    body = lines(*step[:4], epoch, *step[4:], redone) + b'{"kind": "step", "st'  # half a line
    artifacts.write_bytes(job.id, "metrics.jsonl", body)

    got = client.get(url, headers=ALICE).json()
    assert got["count"] == 7
    assert [(r["kind"], r["step"]) for r in got["data"]] == [
        ("step", 1), ("step", 2), ("step", 3), ("step", 4), ("epoch", 4), ("step", 5),
        ("step", 6)]
    assert got["data"][2]["loss"] == 9.0  # the latest record of step 3

    assert [r["step"] for r in client.get(url, params={"since": 4}, headers=ALICE
                                          ).json()["data"]] == [5, 6]
    # A page cut by `limit` keeps both records of its last step, so since=4 next misses none.
    page = client.get(url, params={"limit": 4}, headers=ALICE).json()
    assert [r["step"] for r in page["data"]] == [1, 2, 3, 4, 4] and page["count"] == 7
    assert client.get(url, params={"since": 6}, headers=ALICE).json() == {"data": [], "count": 0}


def test_metrics_fall_back_to_the_heartbeat_history(
    env: tuple[TestClient, JobStore, ArtifactStore],
) -> None:
    client, store, artifacts = env
    job = store.create_job("alice", SPEC, "cpu", None)
    store.claim_job(job.id, "w", 3)
    history = [{"kind": "epoch", "step": 10, "val_accuracy": 0.4},
               {"kind": "epoch", "step": 20, "val_accuracy": 0.6}]
    progress = {"step": 23, "total_steps": 40, "loss": 0.7, "accuracy": 0.8, "eta_s": 4,
                "budget_fraction": 0.3, "beta": 5.0, "epoch": 3, "val_accuracy": 0.6}
    store.heartbeat(job.id, progress, metrics={"history": history})
    got = client.get(f"/v1/jobs/{job.id}/metrics", params={"since": 10}, headers=ALICE).json()
    now = {"kind": "progress", "step": 23, "epoch": 3, "loss": 0.7, "accuracy": 0.8,
           "budget_fraction": 0.3, "beta": 5.0}
    assert got == {"data": [history[1], now], "count": 2}
    # Once the worker has written metrics.jsonl, that file is the only source.
    artifacts.write_bytes(job.id, "metrics.jsonl", lines({"kind": "step", "step": 1}))
    got = client.get(f"/v1/jobs/{job.id}/metrics", headers=ALICE).json()
    assert got == {"data": [{"kind": "step", "step": 1}], "count": 1}


def test_metrics_access_and_validation(env: tuple[TestClient, JobStore, ArtifactStore]) -> None:
    client, store, _ = env
    job = store.create_job("alice", SPEC, "cpu", None)
    url = f"/v1/jobs/{job.id}/metrics"
    resp = client.get(url)
    assert resp.status_code == 401 and resp.json() == {"detail": "missing or invalid bearer token"}
    resp = client.get(url, headers=BOB)  # another tenant's job does not exist for bob
    assert resp.status_code == 404 and resp.json() == {"detail": "job not found"}
    assert client.get("/v1/jobs/nope/metrics", headers=ALICE).status_code == 404
    for params in ({"since": -2}, {"limit": 0}, {"since": "x"}):
        resp = client.get(url, params=params, headers=ALICE)
        assert resp.status_code == 422
        assert resp.json()["detail"][0]["loc"][:2] == ["query", next(iter(params))]


@pytest.mark.parametrize("path,script", [("/", "jobs.js"), ("/jobs/abc", "job.js"),
                                         ("/cost-models/abc", "cost_model.js")])
def test_pages_are_served_with_a_strict_policy(
    env: tuple[TestClient, JobStore, ArtifactStore], path: str, script: str,
) -> None:
    client, _, _ = env
    resp = client.get(path)  # no token needed: the page asks for one, the API checks it
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert f'src="/static/{script}"' in resp.text
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp


@pytest.mark.parametrize("path", ["/", "/jobs/abc", "/sweeps/abc", "/compare", "/profiles",
                                  "/cost-models/abc"])
def test_every_page_has_the_shared_head_header_and_sign_in(
    env: tuple[TestClient, JobStore, ArtifactStore], path: str,
) -> None:
    client, _, _ = env
    html = client.get(path).text
    assert "<!-- include" not in html
    assert html.index('<meta charset="utf-8">') < html.index("<title>")
    for part in ('href="/static/dashboard.css"', 'src="/static/common.js"', 'id="sign-out"',
                 'href="/profiles" data-nav', 'id="token-form"'):
        assert html.count(part) == 1, part


def test_static_files(env: tuple[TestClient, JobStore, ArtifactStore]) -> None:
    client, _, _ = env
    for name, kind in (("charts.js", "text/javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        resp = client.get(f"/static/{name}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind)
        assert resp.headers["x-content-type-options"] == "nosniff"
    for bad in ("missing.js", "dashboard.py", ".hidden.js", "..%2Froutes%2Fdashboard.py"):
        resp = client.get(f"/static/{bad}")
        assert resp.status_code == 404, bad
    assert "/static/{name}" not in client.get("/openapi.json").text


def test_nothing_is_loaded_from_elsewhere() -> None:
    """Every script, style and font is the app's own: no URL leaves it (SVG's namespace aside)."""
    files = [*STATIC_DIR.iterdir(), *PAGES_DIR.iterdir()]
    assert {p.suffix for p in files} >= {".js", ".css", ".html"}
    for path in files:
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", path.read_text())
        assert [u for u in urls if u != "http://www.w3.org/2000/svg"] == [], path.name
