"""The hardware a latency was measured on: collected on the worker, compared everywhere.

A profile, the cost model fitted from it and every deployment measurement carry a `hardware`
record (DESIGN.md "Contracts"):

    {"device": "cpu" | "cuda", "cpu": "AMD EPYC 7B13", "cores": 2, "threads": 1,
     "gpu": "NVIDIA H200" | null, "gpu_memory_gb": 139.8 | null, "driver": "550.54" | null,
     "cuda": "12.8" | null, "torch": "2.13.0", "kernels": ["csr", "dense"]}

Its `fingerprint` is a short hash of the parts that decide whether a cost model measured there
predicts latency here: the device type, CPU model, GPU name and memory, driver, CUDA and torch
versions, and (for CPU devices) the torch threads a job uses. Cores of the machine and the
kernels a profile chose are recorded but not hashed: the former does not change one job's
speed when the threads are the same, the latter is a property of the model profiled, not of
the machine. `collect` imports torch lazily; everything else here is plain Python, so the API
compares fingerprints without loading torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

KEY_FIELDS = ("device", "cpu", "threads", "gpu", "gpu_memory_gb", "driver", "cuda", "torch")
_NVIDIA_PROC = "/proc/driver/nvidia/version"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version, from /proc (no library needed), else nvidia-smi."""
    try:
        with open(_NVIDIA_PROC, encoding="utf-8") as f:
            match = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]+)", f.read())
            if match:
                return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def collect(device: Any = "cpu", kernels: Iterable[str] = ()) -> dict[str, Any]:
    """This process's hardware record for `device` (a torch device or its name)."""
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {
        "device": dev.type, "cpu": cpu_model(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "gpu": None, "gpu_memory_gb": None,
        "driver": None, "cuda": torch.version.cuda, "torch": torch.__version__.split("+")[0],
        "kernels": sorted(set(kernels)),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["driver"] = nvidia_driver()
    return info


def key(hardware: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `hardware` that the fingerprint hashes (threads only on CPU devices)."""
    out = {f: hardware.get(f) for f in KEY_FIELDS}
    if out["device"] != "cpu":
        out["threads"] = None  # a GPU kernel's time does not depend on the host's threads
    return out


def fingerprint(hardware: Mapping[str, Any]) -> str:
    """16 hex digits identifying the hardware for cost-model matching."""
    text = json.dumps(key(hardware), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def label(hardware: Mapping[str, Any]) -> str:
    """One line for people, e.g. 'cpu: AMD EPYC 7B13, 1 thread, torch 2.13.0'."""
    if hardware.get("device") == "cuda":
        gpu = f"cuda: {hardware.get('gpu')}"
        mem = hardware.get("gpu_memory_gb")
        parts = [f"{gpu} ({mem:g} GB)" if mem else gpu, f"driver {hardware.get('driver')}",
                 f"CUDA {hardware.get('cuda')}"]
    else:
        n = hardware.get("threads")
        parts = [f"cpu: {hardware.get('cpu')}", f"{n} thread{'s' if n != 1 else ''}"]
    return ", ".join([*parts, f"torch {hardware.get('torch')}"])[:400]


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """'field: expected -> actual' for each fingerprinted field that differs."""
    a, b = key(expected), key(actual)
    return [f"{f}: {a[f]!r} -> {b[f]!r}" for f in KEY_FIELDS if a[f] != b[f]]


def from_machine(profile: Mapping[str, Any]) -> dict[str, Any] | None:
    """A hardware record for a profile or cost model: its own `hardware`, else one derived
    from the `machine` block older profiles carry (None when it has neither)."""
    hw = profile.get("hardware")
    if isinstance(hw, Mapping):
        return dict(hw)
    machine = profile.get("machine")
    if not isinstance(machine, Mapping):
        return None
    kernels = _kernels(profile)
    return {
        "device": "cuda" if machine.get("gpu") else "cpu", "cpu": machine.get("cpu"),
        "cores": machine.get("cpu_count"), "threads": machine.get("threads"),
        "gpu": machine.get("gpu"), "gpu_memory_gb": machine.get("gpu_memory_gb"),
        "driver": machine.get("driver"), "cuda": machine.get("cuda"),
        "torch": str(machine.get("torch") or "").split("+")[0] or None, "kernels": kernels,
    }


def _kernels(profile: Mapping[str, Any]) -> list[str]:
    layers = profile.get("layers")
    items = layers.values() if isinstance(layers, Mapping) else layers or []
    return sorted({str(lay["kernel"]) for lay in items
                   if isinstance(lay, Mapping) and lay.get("kernel")})
