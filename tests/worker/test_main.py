"""Starting workers: queue and thread choices, and `python -m worker` argument errors."""

from __future__ import annotations

import pytest

from jobs.settings import Settings
from worker import main


def test_threads_leave_a_core_and_split_across_processes(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(main.os, "cpu_count", lambda: 9)
    assert main.torch_threads(Settings(worker_threads=0), 1) == 8
    assert main.torch_threads(Settings(worker_threads=0), 3) == 2
    assert main.torch_threads(Settings(worker_threads=0), 16) == 1
    assert main.torch_threads(Settings(worker_threads=5), 3) == 5


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
