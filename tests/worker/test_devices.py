"""What a worker advertises: ranks per job on each queue."""

from __future__ import annotations

from pathlib import Path

from spartan_service.jobs.settings import Settings
from spartan_service.worker.devices import capacity, devices

CPU_BOX = {"host": "a", "cpus": 16, "gpus": []}
GPU_BOX = {"host": "b", "cpus": 32, "gpus": ["H100"] * 4}


def test_capacity_is_cores_on_cpu_and_gpus_on_gpu(settings: Settings) -> None:
    assert capacity(settings, ["cpu"], CPU_BOX) == {"cpu": 16}
    assert capacity(settings, ["gpu", "cpu"], GPU_BOX) == {"gpu": 4, "cpu": 32}
    # the gpu queue on a machine without GPUs runs on its cores
    assert capacity(settings, ["gpu"], CPU_BOX) == {"gpu": 16}


def test_capacity_setting_overrides(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, worker_processes=2)
    assert capacity(s, ["cpu", "gpu"], GPU_BOX) == {"cpu": 2, "gpu": 2}


def test_devices_of_this_machine() -> None:
    found = devices()
    assert found["cpus"] >= 1 and isinstance(found["gpus"], list)
