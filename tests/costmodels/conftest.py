"""Synthetic profiles for the cost-model tests."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest


def synthetic_profile(intercept: float = 0.05, slope: float = 2e-5, n: int = 16,
                      noise: float = 0.02, spikes: int = 0, seed: int = 0,
                      shape: tuple[int, int] = (256, 64), name: str = "fc1") -> dict[str, Any]:
    """One layer, n densities, multiplicative noise, `spikes` samples 5-20x too slow."""
    rng = np.random.default_rng(seed)
    total = shape[0] * shape[1]
    nnz = np.unique(np.linspace(0.02, 1.0, n) * total).astype(int)
    lat = (intercept + slope * nnz) * (1 + rng.normal(0, noise, len(nnz)))
    idx = rng.choice(len(nnz), spikes, replace=False)
    lat[idx] *= rng.uniform(5, 20, spikes)
    samples = [{"nnz_blocks": int(k), "latency": float(v)} for k, v in zip(nnz, lat, strict=True)]
    return {"device": "test", "unit": "ms",
            "layers": [{"name": name, "shape": list(shape), "block": [1, 1],
                        "samples": samples}]}


@pytest.fixture
def profile() -> dict[str, Any]:
    two = synthetic_profile()
    two["layers"].append(copy.deepcopy(synthetic_profile(0.02, 1e-5, name="fc2",
                                                          shape=(10, 256))["layers"][0]))
    return two
