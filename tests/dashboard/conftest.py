"""Fixtures of the dashboard tests: the app served by uvicorn on a free port over a temporary
SQLite store, the stores to drive job state directly (no worker), and headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.jobs.store import JobStore
from tests.files import artifact_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TOKENS = "alice:token-alice,bob:token-bob"


def build_app(settings: Settings) -> FastAPI:
    from spartan_service.service.main import create_app

    return create_app(settings)


@dataclass
class Served:
    """A running app: its URL, settings and the stores behind it."""

    url: str
    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    tokens: dict[str, str] = field(default_factory=dict)  # tenant -> token

    def client(self, tenant: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def new_job(self, tenant: str = "default", name: str | None = None, **spec: Any) -> str:
        body = {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
                "sparsity": {"method": "spartan", "budget": 0.1}, "training": {"epochs": 2},
                **spec}
        parsed = JobSpec.model_validate(body)
        job = self.store.create_job(tenant, parsed.model_dump(mode="json"), "cpu", name)
        return job.id

    def start(self, job_id: str, total_steps: int = 100) -> None:
        assert self.store.claim_job(job_id, "celery@test-host", max_attempts=3) is not None
        self.store.heartbeat(job_id, {"step": 0, "total_steps": total_steps, "device": "cpu"})

    def progress(self, job_id: str, step: int, total_steps: int = 100, **extra: Any) -> None:
        self.store.heartbeat(job_id, {"step": step, "total_steps": total_steps, "epoch": 1,
                                      "device": "cpu", **extra})

    def write_metrics(self, job_id: str, steps: range, total: int = 100) -> None:
        """Adds records as the worker logs them (a per-step record each step, an epoch record
        with validation every 50 steps), rewriting the file atomically as the worker does."""
        lines = []
        for s in steps:
            lines.append(json.dumps(metric_record(s, total)))
            if s % 50 == 0:
                lines.append(json.dumps(metric_record(s, total, epoch=True)))
        path = artifact_file(self.artifacts, job_id, "metrics.jsonl")
        old = path.read_text() if path.exists() else ""
        data = old + "\n".join(lines) + "\n"
        self.artifacts.write_bytes(job_id, "metrics.jsonl", data.encode())


def metric_record(step: int, total: int, epoch: bool = False) -> dict[str, Any]:
    """A metrics.jsonl line in the worker's shape (worker/training.py)."""
    frac = step / max(total, 1)
    record = {"kind": "epoch" if epoch else "step", "step": step, "epoch": step // 50 + 1,
              "loss": 2.3 * (1 - frac) + 0.1, "accuracy": 0.1 + 0.85 * frac,
              "budget_fraction": max(0.1, 1 - 1.8 * frac), "beta": 1 + 19 * frac}
    if epoch:
        record.update(val_loss=2.4 * (1 - frac) + 0.2, val_accuracy=0.1 + 0.8 * frac)
    else:
        record["lr"] = 1e-3
    return record


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(tmp: Path, api_tokens: str | None = None) -> Iterator[Served]:
    settings = Settings(data_dir=tmp, api_tokens=api_tokens)
    app = build_app(settings)
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    store = JobStore(settings.db_url)
    tokens = {t: k for k, t in settings.tokens().items()}
    try:
        yield Served(f"http://127.0.0.1:{port}", settings, store,
                     ArtifactStore(settings.artifacts_dir), tokens)
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
        sock.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("open"))


@pytest.fixture(scope="session")
def served_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("tokens"), TOKENS)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        reason = f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """JavaScript errors, console errors and requests that leave the app's origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.items: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.items.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.items.append(f"console {message.type}: {message.text}")

    def _request(self, request: Any) -> None:
        url = request.url
        if not url.startswith((self.origin, "blob:", "data:")):
            self.items.append(f"external request: {url}")


def open_page(browser: Any, srv: Served, allowed: tuple[str, ...] = ()) -> Iterator[Any]:
    context = browser.new_context(base_url=srv.url, viewport={"width": 1366, "height": 800},
                                  accept_downloads=True)
    context.set_default_timeout(8000)
    page = context.new_page()
    problems = PageProblems(srv.url)
    problems.watch(page)
    page.problems = problems
    try:
        yield page
    finally:
        context.close()
    unexpected = [p for p in problems.items if not any(text in p for text in allowed)]
    assert not unexpected, unexpected


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    yield from open_page(browser, served)


@pytest.fixture
def token_page(browser: Any, served_tokens: Served) -> Iterator[Any]:
    # Chromium logs each 401 and 404 response as a console error; with tokens those are expected.
    yield from open_page(browser, served_tokens, ("status of 401", "status of 404"))


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, animations="disabled")
