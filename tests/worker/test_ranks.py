"""Jobs across processes (resources.processes): ranks launched by the elastic launcher, gloo on
CPU. Slow-ish (each launch starts fresh Python processes), so few and small.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker.runner import run_job
from tests.files import artifact_file, private_file
from tests.worker.conftest import TINY, Submit, merged

pytestmark = pytest.mark.slow


def report(artifacts: ArtifactStore, job_id: str) -> dict[str, Any]:
    return dict(json.loads(artifact_file(artifacts, job_id, "report.json").read_text()))


def test_two_ranks_train_the_model_one_process_trains(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    """Same global batch: the same masks, weights equal to float tolerance; every checkpoint
    compared the ranks' masks and weights (gathered from both ranks)."""
    one = submit(TINY)
    two = submit(merged(TINY, resources={"processes": 2}))
    for job_id in (one, two):
        run_job(job_id, store, artifacts, settings)
        job = store.get_job(job_id)
        assert job is not None and job.status == "succeeded", job and job.error
    r1, r2 = report(artifacts, one), report(artifacts, two)
    assert r2["training"]["world_size"] == 2 and r2["training"]["global_batch"] == 64
    # checkpoints at steps 5, 10, 15, 20 and the epoch's end (23): all compared across ranks
    assert r2["training"]["ranks_compared"] == 5
    assert r1["training"]["world_size"] == 1 and r1["training"]["ranks_compared"] == 0
    m1 = load_file(str(artifact_file(artifacts, one, "model.safetensors")))
    m2 = load_file(str(artifact_file(artifacts, two, "model.safetensors")))
    for name, w in m1.items():
        assert torch.equal(w != 0, m2[name] != 0), name
        torch.testing.assert_close(m2[name], w, rtol=1e-5, atol=1e-5)
    assert r2["accuracy"]["final"] == pytest.approx(r1["accuracy"]["final"], abs=0.01)
    assert not private_file(artifacts, two, "checkpoint.safetensors").exists()


def rank_pids() -> list[int]:
    """The ranks this process launched (spawned by the launcher's agent, a child of this
    process; not multiprocessing's resource tracker), in start order: rank 0 first."""
    parents, commands = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    agents = [p for p, pp in parents.items() if pp == os.getpid()]
    return sorted(p for p, pp in parents.items() if pp in agents
                  and b"spawn_main" in commands[p] and b"resource_tracker" not in commands[p])


def test_a_killed_rank_ends_the_attempt_and_the_job_resumes(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings) -> None:
    job_id = submit(merged(TINY, training={"epochs": 12, "checkpoint_every": 10},
                           resources={"processes": 2}))
    runner = threading.Thread(target=run_job, args=(job_id, store, artifacts, settings))
    runner.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.is_alive():
        job = store.get_job(job_id)
        if private_file(artifacts, job_id, "checkpoint.safetensors").exists() and job is not None \
                and job.progress.get("step", 0) >= 30:
            break
        time.sleep(0.2)
    pids = rank_pids()
    assert len(pids) == 2, "the ranks were not found while the job ran"
    os.kill(pids[-1], signal.SIGKILL)  # rank 1
    runner.join(timeout=120)
    assert not runner.is_alive()
    job = store.get_job(job_id)
    assert job is not None and job.status == "queued" and job.attempts == 1, job and job.error
    run_job(job_id, store, artifacts, settings)  # the next delivery of its message
    job = store.get_job(job_id)
    assert job is not None and job.status == "succeeded", job.error
    rep = report(artifacts, job_id)
    assert rep["training"]["attempts"] == 2 and rep["training"]["resumed_from_step"] >= 30
    assert rep["training"]["world_size"] == 2 and rep["training"]["steps"] == 12 * 23
    # no duplicate records: every step logged once, in order, across both attempts
    steps = [json.loads(line)["step"] for line in
             artifact_file(artifacts, job_id, "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == sorted(set(steps))
    names = [str(a["name"]) for a in artifacts.list(job_id)]
    assert len(names) == len(set(names)) and "checkpoint.safetensors" not in names
