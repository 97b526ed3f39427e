"""The headline figures of a finished job, read from its report.json: accuracy, measured and
predicted latency. Sweeps, the job list and the compare view show them.

The report's `latency` section (DESIGN.md) is read when present; reports written before it
have the same measurements in their `speedup` section (the row at the training batch size)
and the prediction in `cost` when the cost model is a latency model.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.report import REPORT

log = logging.getLogger(__name__)

TIME_UNITS = {"s": 1000.0, "ms": 1.0, "us": 0.001}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _section(report: dict[str, Any], name: str) -> dict[str, Any]:
    value = report.get(name)
    return value if isinstance(value, dict) else {}


def _ms(value: Any, unit: Any) -> float | None:
    number = _num(value)
    scale = TIME_UNITS.get(unit) if isinstance(unit, str) else None
    return number * scale if number is not None and scale is not None else None


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """{accuracy, dense_accuracy, metric, measured_latency, dense_latency, predicted_latency,
    latency_unit: "ms", density}; a figure the report lacks is None. `accuracy` holds the
    task's metric, which `metric` names (accuracy, r2, perplexity)."""
    acc = _section(report, "accuracy")
    accuracy = _num(acc.get("sparse"))
    if accuracy is None:
        accuracy = _num(acc.get("final"))
    metric = acc.get("metric")
    out: dict[str, Any] = {
        "accuracy": accuracy, "dense_accuracy": _num(acc.get("dense")),
        "metric": metric if isinstance(metric, str) else "accuracy",
        "measured_latency": None, "dense_latency": None, "predicted_latency": None,
        "latency_unit": "ms", "density": _num(_section(report, "sparsity").get("density")),
    }
    latency = _section(report, "latency")
    if latency:
        unit = latency.get("unit", "ms")
        out["measured_latency"] = _ms(latency.get("sparse_measured"), unit)
        out["dense_latency"] = _ms(latency.get("dense_measured"), unit)
        out["predicted_latency"] = _ms(latency.get("predicted"), unit)
    speedup = _section(report, "speedup")
    rows = speedup.get("batches")
    if out["measured_latency"] is None and isinstance(rows, list) and rows:
        main = rows[-1] if isinstance(rows[-1], dict) else {}
        unit = speedup.get("unit", "ms")
        out["measured_latency"] = _ms(main.get("sparse_ms"), unit)
        out["dense_latency"] = _ms(main.get("dense_ms"), unit)
    if out["predicted_latency"] is None:
        cost = _section(report, "cost")
        out["predicted_latency"] = _ms(cost.get("predicted"), cost.get("unit"))
    return out


class ResultsCache:
    """Summaries of finished jobs' reports, read once each: a report does not change after its
    job has finished, so (job id, finished_at) is a complete key. Bounded, least recently used
    first out."""

    def __init__(self, artifacts: ArtifactStore, size: int = 4096) -> None:
        self.artifacts = artifacts
        self.size = size
        self._items: OrderedDict[tuple[str, datetime], dict[str, Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, finished_at: datetime | None) -> dict[str, Any] | None:
        """The summary of a finished job's report; None without one (not finished, failed,
        or no readable report)."""
        if finished_at is None:
            return None
        key = (job_id, finished_at)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        summary = self._read(job_id)
        with self._lock:
            self._items[key] = summary
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return summary

    def _read(self, job_id: str) -> dict[str, Any] | None:
        try:
            report = json.loads(self.artifacts.read_bytes(job_id, REPORT))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("unreadable report of job %s", job_id, exc_info=True)
            return None
        return summarize(report) if isinstance(report, dict) else None
