"""`spartan demo --exit`: what `make demo` runs, start to finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, base_env


@pytest.mark.slow
def test_demo_trains_and_prints_where_results_are(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spartan_service.cli", "demo", "--exit", "--port", "0"],
        cwd=REPO, env=base_env(tmp_path / "data"), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    port = int(out.split("serving on http://127.0.0.1:", 1)[1].split("\n", 1)[0])
    job_id = out.split("submitted job ", 1)[1].split(":", 1)[0]
    assert f"job {job_id} succeeded" in out
    assert f"results in {tmp_path / 'data' / 'artifacts' / job_id}" in out
    for name in ("model.safetensors", "masks.safetensors", "report.json"):
        assert f"http://127.0.0.1:{port}/v1/jobs/{job_id}/artifacts/{name}" in out
        assert (tmp_path / "data" / "artifacts" / job_id / name).is_file()
    assert f"dashboard: http://127.0.0.1:{port}/" in out
    assert "step" in result.stderr  # the progress bar
