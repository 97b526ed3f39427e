"""Starting workers: queue and thread choices, and `python -m worker` argument errors."""

from __future__ import annotations

import os

import pytest

from spartan_service.jobs.settings import Settings
from spartan_service.worker import main, process


def test_threads_leave_a_core_and_split_across_processes(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(main.os, "cpu_count", lambda: 9)
    assert process.torch_threads(Settings(worker_threads=0), 1) == 8
    assert process.torch_threads(Settings(worker_threads=0), 3) == 2
    assert process.torch_threads(Settings(worker_threads=0), 16) == 1
    assert process.torch_threads(Settings(worker_threads=5), 3) == 5


def test_default_queues_follow_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "cuda_available", lambda: True)
    assert main.default_queues() == ["gpu", "cpu"]
    monkeypatch.setattr(main, "cuda_available", lambda: False)
    assert main.default_queues() == ["cpu"]


def test_bad_arguments_are_refused_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main.main(["--queues", "cpu,tpu"])
    assert info.value.code == 2 and "unknown queues tpu; valid: cpu, gpu" in capsys.readouterr().err
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        main.run_worker(["cpu"], 0)


def test_job_pool_gives_each_task_a_fresh_process_and_joins_clean() -> None:
    """One process per task, and none left behind by join. How fast (the reason for this pool)
    is measured by `python -m benchmarks.job_latency`, not here."""
    pool = main.JobProcessPool(processes=1, maxtasksperchild=1, threads=True)
    try:
        pids = [pool.apply_async(os.getpid).get(timeout=30) for _ in range(4)]
    finally:
        pool.close()
        pool.join()
    assert len(set(pids)) == 4 and os.getpid() not in pids
    for pid in pids:  # every child has exited and been reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_runs_the_job_pool() -> None:
    from celery.concurrency import get_implementation

    pool = get_implementation("spartan_service.worker.main:JobTaskPool")
    assert pool.BlockingPool is main.JobProcessPool
