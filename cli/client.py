"""A small HTTP client of the REST API, used by the CLI (and the tests and benchmarks)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from spartan_service.jobs.status import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(RuntimeError):
    """The API answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
            for item in detail if isinstance(item, dict)
        )
    return str(detail)


class Client:
    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("SPARTAN_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("SPARTAN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the API at {self.url}: {exc}") from None
        if response.is_error:
            raise ClientError(f"{response.status_code}: {_detail(response)}", response.status_code)
        return response.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = self.request("POST", "/v1/jobs", json=spec)
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return job

    def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    def jobs(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        page: dict[str, Any] = self.request("GET", "/v1/jobs", params=params)
        return page

    def logs(self, job_id: str, since: int = 0) -> dict[str, Any]:
        page: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}/logs",
                                            params={"since": since})
        return page

    def create_sweep(self, body: dict[str, Any]) -> dict[str, Any]:
        sweep: dict[str, Any] = self.request("POST", "/v1/sweeps", json=body)
        return sweep

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        sweep: dict[str, Any] = self.request("GET", f"/v1/sweeps/{sweep_id}")
        return sweep

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        sweep: dict[str, Any] = self.request("POST", f"/v1/sweeps/{sweep_id}/cancel")
        return sweep

    def submit_profile(self, body: dict[str, Any]) -> dict[str, Any]:
        profile: dict[str, Any] = self.request("POST", "/v1/profiles", json=body)
        return profile

    def profile(self, profile_id: str) -> dict[str, Any]:
        profile: dict[str, Any] = self.request("GET", f"/v1/profiles/{profile_id}")
        return profile

    def wait_profile(self, profile_id: str,
                     on_update: Callable[[dict[str, Any]], None] | None = None,
                     poll_s: float = 0.5, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the profile job ends."""
        return self._wait(self.profile, profile_id, on_update, poll_s, timeout_s)

    def register_cost_model(self, body: dict[str, Any]) -> dict[str, Any]:
        model: dict[str, Any] = self.request("POST", "/v1/cost-models", json=body)
        return model

    def cost_models(self, hardware: str | None = None, name: str | None = None,
                    limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("hardware", hardware), ("name", name)) if v})
        page: dict[str, Any] = self.request("GET", "/v1/cost-models", params=params)
        return page

    def cost_model(self, model_id: str) -> dict[str, Any]:
        model: dict[str, Any] = self.request("GET", f"/v1/cost-models/{model_id}")
        return model

    def refit_cost_model(self, model_id: str) -> dict[str, Any]:
        model: dict[str, Any] = self.request("POST", f"/v1/cost-models/{model_id}/refit")
        return model

    def page_url(self, kind: str, item_id: str) -> str:
        """The dashboard page of a job or a sweep."""
        return f"{self.url}/{kind}/{item_id}"

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        page: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}/artifacts")
        return list(page["data"])

    def download(self, job_id: str, name: str, target: Path) -> Path:
        """Stream one artifact to `target` (written under a temporary name, then renamed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
                if response.is_error:
                    response.read()
                    raise ClientError(f"{response.status_code}: {_detail(response)}",
                                      response.status_code)
                with partial.open("wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise ClientError(f"download of {name} failed: {exc}") from None
        partial.replace(target)
        return target

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job ends; unreachable API (a restart) is retried for 30 s."""
        return self._wait(self.job, job_id, on_update, poll_s, timeout_s)

    def wait_sweep(self, sweep_id: str,
                   on_update: Callable[[dict[str, Any]], None] | None = None,
                   poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until every point of the sweep has ended."""
        return self._wait(self.sweep, sweep_id, on_update, poll_s, timeout_s)

    def _wait(self, get: Callable[[str], dict[str, Any]], item_id: str,
              on_update: Callable[[dict[str, Any]], None] | None, poll_s: float,
              timeout_s: float | None) -> dict[str, Any]:
        start = time.monotonic()
        lost_since: float | None = None
        while True:
            try:
                job = get(item_id)
                lost_since = None
            except ClientError as exc:
                if exc.status is not None:
                    raise
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > 30:
                    raise
                time.sleep(poll_s)
                continue
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise ClientError(f"{item_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)
