"""Latency cost models: profile real sparse kernels, fit robust linear models, use them.

Importing this package loads no torch: schema, fitting, plotting and file helpers are plain
Python + scikit-learn (the API fits uploaded profiles). The torch parts (profile_model,
block_costs, budget_fraction, predict_cost, params_cost_model, flops_cost_model) are imported
on first use of their names, or directly from costmodels.profiler / .bridge / .builtin.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from spartan_service.costmodels.fit import (
    LinearCostFitter,
    cross_val_mape,
    fit_profile,
    predict_latency,
)
from spartan_service.costmodels.fit_channels import BilinearCostFitter
from spartan_service.costmodels.io import load_cost_model, load_profile, write_json_atomic
from spartan_service.costmodels.plot import plot_fit
from spartan_service.costmodels.schema import (
    CostModel,
    Profile,
    ProfileError,
    validate_cost_model,
    validate_profile,
)

_LAZY = {
    "profile_model": "spartan_service.costmodels.profiler",
    "block_costs": "spartan_service.costmodels.bridge",
    "budget_fraction": "spartan_service.costmodels.bridge",
    "cost_split": "spartan_service.costmodels.bridge",
    "predict_cost": "spartan_service.costmodels.bridge",
    "params_cost_model": "spartan_service.costmodels.builtin",
    "flops_cost_model": "spartan_service.costmodels.builtin",
    "channel_cost_model": "spartan_service.costmodels.builtin",
    "profile_channels": "spartan_service.costmodels.structured",
    "channel_costs": "spartan_service.costmodels.channel_bridge",
    "channel_cost_split": "spartan_service.costmodels.channel_bridge",
    "channel_budget_fraction": "spartan_service.costmodels.channel_bridge",
}

__all__ = [
    "BilinearCostFitter",
    "CostModel",
    "LinearCostFitter",
    "Profile",
    "ProfileError",
    "cross_val_mape",
    "fit_profile",
    "load_cost_model",
    "load_profile",
    "plot_fit",
    "predict_latency",
    "validate_cost_model",
    "validate_profile",
    "write_json_atomic",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'costmodels' has no attribute {name!r}")
