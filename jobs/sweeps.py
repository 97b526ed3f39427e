"""Sweeps: one base job spec trained at several budgets (and methods, structures), tracked
together, and the accuracy-latency frontier of the results.

No torch, no FastAPI: the API expands a sweep into job specs here and reads each finished
point's figures from its report (spartan_service.jobs.results).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spartan_service.jobs.fields import FiniteFloat, Name, Tag
from spartan_service.jobs.spec import JobSpec

MAX_POINTS = 200
Method = Literal["spartan", "dual_averaging", "imp", "dense"]


class SweepCreate(BaseModel):
    """What a client sends: a job spec and the budgets to train it at."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "mlp-digits-frontier",
        "spec": {"model": {"arch": "mlp"}, "data": {"dataset": "digits"},
                 "training": {"epochs": 2}},
        "budgets": [0.05, 0.1, 0.2, 0.4],
        "methods": ["spartan", "dense"],
    }]})

    name: Name | None = None
    spec: JobSpec = Field(description="The base job spec every point starts from.")
    budgets: list[FiniteFloat] = Field(
        min_length=1, max_length=MAX_POINTS,
        description="One point per budget: sparsity.budget (fraction of the cost kept), or "
        "cost_model.budget_ms when the base spec sets a latency budget.",
    )
    methods: list[Method] | None = Field(
        default=None, min_length=1, max_length=4,
        description="Sparsity methods to sweep (default: the spec's). 'dense' adds one dense "
        "reference point, whatever the budgets.",
    )
    structures: list[Tag] | None = Field(
        default=None, min_length=1, max_length=4,
        description="Values of sparsity.structure to sweep (default: the spec's).",
    )


class PointError(ValueError):
    """A point's spec does not validate; `loc` names the sweep field to blame."""

    def __init__(self, loc: list[str | int], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


@dataclass(frozen=True)
class Point:
    budget: float | None
    method: str
    structure: str | None
    spec: JobSpec

    def key(self) -> dict[str, Any]:
        return {"budget": self.budget, "method": self.method, "structure": self.structure}


def budget_kind(spec: dict[str, Any]) -> str:
    """What the sweep's budgets mean for this base spec (as stored, defaults filled in)."""
    return "fraction" if (spec.get("cost_model") or {}).get("budget_ms") is None else "budget_ms"


def _point(base: dict[str, Any], budget: float | None, method: str, structure: str | None,
           loc: list[str | int], kind: str) -> JobSpec:
    data = {**base, "sparsity": {**base["sparsity"], "method": method},
            "cost_model": dict(base["cost_model"])}
    if structure is not None:
        data["sparsity"]["structure"] = structure
    if budget is not None:
        if kind == "budget_ms":
            data["cost_model"]["budget_ms"] = budget
        else:
            data["sparsity"]["budget"] = budget
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PointError(loc, f"{field}: {first['msg']}") from None


def expand(sweep: SweepCreate) -> list[Point]:
    """The sweep's points in order: methods x structures x budgets, one dense point at most.
    Raises PointError naming the budget, method or structure that makes an invalid spec."""
    base = sweep.spec.model_dump(mode="json")
    kind = budget_kind(base)
    methods = sweep.methods or [sweep.spec.sparsity.method]
    structures: Sequence[str | None] = sweep.structures or [None]
    points: list[Point] = []
    for m_i, method in enumerate(dict.fromkeys(methods)):
        if method == "dense":
            points.append(Point(None, "dense", None,
                                _point(base, None, "dense", None, ["body", "methods", m_i], kind)))
            continue
        for s_i, structure in enumerate(structures):
            if structure is not None:
                # One check per structure, so that an unknown one is blamed, not a budget.
                _point(base, None, method, structure, ["body", "structures", s_i], kind)
            for b_i, budget in enumerate(sweep.budgets):
                spec = _point(base, budget, method, structure, ["body", "budgets", b_i], kind)
                points.append(Point(budget, method, structure, spec))
    if len(points) > MAX_POINTS:
        raise PointError(["body", "budgets"],
                         f"{len(points)} points; a sweep has at most {MAX_POINTS}")
    return points


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def pareto(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For (accuracy, latency) pairs: whether each is on the frontier of max accuracy and min
    latency, i.e. no other point is at least as accurate and at least as fast, and strictly
    better in one. Points missing either figure are never on it. O(n log n)."""
    known = [(i, a, lat) for i, (a, lat) in enumerate(points) if a is not None and lat is not None]
    on = [False] * len(points)
    # Fastest first; among equally fast, most accurate first. A point is on the frontier when
    # it is the best of its latency and more accurate than everything faster (or an exact
    # duplicate of such a point).
    known.sort(key=lambda t: (t[2], -t[1]))
    best = -math.inf
    latency = math.nan
    group_top: tuple[float, bool] = (-math.inf, False)  # the latency's best, on the frontier
    for i, acc, lat in known:
        if lat != latency:
            latency, group_top = lat, (acc, acc > best)
            best = max(best, acc)
            on[i] = group_top[1]
        elif acc == group_top[0]:
            on[i] = group_top[1]  # an exact duplicate of that latency's best
    return on


def sweep_status(statuses: Sequence[str], cancel_requested: bool) -> str:
    """One state for the whole sweep, in the jobs' vocabulary."""
    if any(s == "running" for s in statuses):
        return "running"
    if any(s == "queued" for s in statuses):
        return "running" if any(s != "queued" for s in statuses) else "queued"
    if statuses and all(s == "succeeded" for s in statuses):
        return "succeeded"
    return "cancelled" if cancel_requested else "failed"


def dense_reference(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the dense model sits: a dense point of the sweep when it has one, else the dense
    figures the sparse points' reports carry (median latency, the accuracy they agree on)."""
    for p in points:
        if p.get("method") == "dense" and p.get("accuracy") is not None:
            return {"accuracy": p["accuracy"], "measured_latency": p.get("measured_latency"),
                    "job_id": p.get("job_id"), "source": "dense point"}
    lats = sorted(x for p in points if (x := _finite(p.get("dense_latency"))) is not None)
    accs = [x for p in points if (x := _finite(p.get("dense_accuracy"))) is not None]
    if not lats and not accs:
        return None
    return {"accuracy": accs[0] if accs else None,
            "measured_latency": lats[len(lats) // 2] if lats else None,
            "job_id": None, "source": "the points' reports"}
