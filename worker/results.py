"""A finished job's artifacts: model.safetensors (plain modules, exact zeros), masks.safetensors
(one bool mask per masked weight), report.json and metrics.jsonl.

About `accuracy.dense` in the report: training a dense twin would double every job's cost, so
the report states where its dense figure comes from instead of inventing one:
- method "dense": the job's own final accuracy;
- initial weights given (model.weights, the pretrained model being sparsified): the accuracy of
  those weights before any training;
- otherwise null: submit the same spec with sparsity.method "dense" for a dense reference.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from jobs.artifacts import ArtifactStore
from worker.costs import CostPlan
from worker.lease import finite
from worker.training import LoopState

DENSE_SOURCES = {
    "job": "this job (method 'dense')",
    "initial": "the initial weights (model.weights) before sparse training",
    None: "not measured: submit the same spec with sparsity.method 'dense' for a reference",
}


def tensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU copies (no shared storage, contiguous)."""
    return save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
                metadata=metadata)


def dense_rows(model: nn.Module, plan: CostPlan, prefixes: list[str] | None
               ) -> list[dict[str, Any]]:
    """Report rows of a dense job, in the shape of the Sparsifier's LayerReport.to_dict()."""
    from spartan.layout import maskable_weights

    rows = []
    for name, p in maskable_weights(model, prefixes).items():
        cost = float(plan.costs[name].sum()) if plan.costs else float(p.numel())
        rows.append({"name": name, "shape": list(p.shape), "block": [1, 1],
                     "blocks": p.shape[0] * p.shape[1], "kept_blocks": p.shape[0] * p.shape[1],
                     "weights": p.numel(), "kept_weights": p.numel(), "cost": cost,
                     "kept_cost": cost, "budget_share": None, "fallback": None,
                     "kept_fraction": 1.0})
    return rows


def sparsity_section(rows: list[dict[str, Any]], method: str, allocation: str, budget: float,
                     step: int) -> dict[str, Any]:
    cost = sum(r["cost"] for r in rows)
    kept_cost = sum(r["kept_cost"] for r in rows)
    weights = sum(r["weights"] for r in rows)
    return {"method": method, "allocation": allocation, "budget": budget, "step": step,
            "cost": cost, "kept_cost": kept_cost, "kept_cost_fraction": kept_cost / cost,
            "density": sum(r["kept_weights"] for r in rows) / weights,
            "fallbacks": [r["name"] for r in rows if r.get("fallback")], "layers": rows}


def cost_section(plan: CostPlan, sparsity: dict[str, Any], predicted: float) -> dict[str, Any]:
    """Predicted cost of the sparse model beside the budget, in the cost model's unit."""
    budget = plan.budget_cost(sparsity["cost"])
    return {"kind": plan.kind, "unit": plan.unit, "budget_fraction": plan.budget_fraction,
            "budget": budget, "predicted": predicted, "dense": plan.fixed + sparsity["cost"],
            "fixed": plan.fixed, "within_budget": predicted <= budget * (1 + 1e-4),
            "predicted_vs_budget": predicted / budget if budget else None}


def accuracy_section(state: LoopState, final: float, method: str, has_weights: bool
                     ) -> dict[str, Any]:
    source = "job" if method == "dense" else "initial" if has_weights else None
    dense = final if source == "job" else state.initial_accuracy if source else None
    return {"sparse": final if method != "dense" else None, "final": final, "dense": dense,
            "dense_source": DENSE_SOURCES[source], "initial": state.initial_accuracy}


def write_results(artifacts: ArtifactStore, job_id: str, model: nn.Module,
                  masks: dict[str, Tensor], report: dict[str, Any], state: LoopState,
                  metadata: dict[str, str]) -> None:
    artifacts.write_bytes(job_id, "model.safetensors",
                          tensors_bytes(model.state_dict(), metadata))
    artifacts.write_bytes(job_id, "masks.safetensors",
                          tensors_bytes({k: m.to(torch.bool) for k, m in masks.items()}))
    artifacts.write_bytes(job_id, "metrics.jsonl", metrics_bytes(state))
    artifacts.write_bytes(job_id, "report.json",
                          json.dumps(finite(report), indent=2, allow_nan=False).encode())


def metrics_bytes(state: LoopState) -> bytes:
    return "".join(json.dumps(finite(r), allow_nan=False) + "\n"
                   for r in state.records).encode()

