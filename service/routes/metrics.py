"""`GET /v1/jobs/{id}/metrics`: the training curve a worker appends to the job's metrics.jsonl.

The dashboard polls it with `since` = the last step it has, so each poll carries only new records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from spartan_service.jobs.report import METRICS as METRICS_FILE
from spartan_service.service.deps import ArtifactsDep, CurrentTenant, StoreDep
from spartan_service.service.errors import not_found, responses

log = logging.getLogger(__name__)


router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class MetricsPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [
        {"kind": "step", "step": 10, "epoch": 1, "loss": 1.93, "accuracy": 0.41, "lr": 1e-3,
         "budget_fraction": 0.91, "beta": 1.4},
        {"kind": "epoch", "step": 23, "epoch": 1, "loss": 1.52, "accuracy": 0.58,
         "val_loss": 1.31, "val_accuracy": 0.66, "budget_fraction": 0.79, "beta": 2.2},
    ], "count": 2}]})

    data: list[dict[str, Any]] = Field(description="Records in step order, one per logged step.")
    count: int = Field(description="Records after `since` in all; more than `data` holds when "
                       "`limit` cut the page (ask again with since = the last step shown).")


def _step(record: Any) -> int | None:
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def select(records: Iterable[Any], since: int) -> list[dict[str, Any]]:
    """Records whose integer `step` is above `since`, in step order. A step may have one record
    of each kind (the worker logs a "step" and an "epoch" record at an epoch's last step); a
    (kind, step) logged twice, as when a resumed job redoes steps, keeps its latest record."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        step = _step(record)
        if step is not None and step > since:
            latest.pop((str(record.get("kind")), step), None)  # re-insert: latest order wins
            latest[(str(record.get("kind")), step)] = record
    return sorted(latest.values(), key=lambda r: r["step"])


PROGRESS_KEYS = ("step", "epoch", "loss", "accuracy", "budget_fraction", "beta")


def heartbeat_records(metrics: dict[str, Any] | None, progress: dict[str, Any] | None
                      ) -> list[Any]:
    history = (metrics or {}).get("history")
    records = list(history) if isinstance(history, list) else []
    if progress and _step(progress):
        records.append({"kind": "progress", **{k: progress.get(k) for k in PROGRESS_KEYS}})
    return records


def read_jsonl(lines: Iterable[bytes]) -> Iterator[Any]:
    """Parsed lines; a line that does not parse (one still being appended) is skipped."""
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            log.debug("skipping a partial or malformed metrics line")


def first_page(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first `limit` records, plus any others of the last one's step, so that a client that
    asks again with since = that step misses nothing."""
    if len(records) <= limit:
        return records
    end = limit
    while end < len(records) and records[end]["step"] == records[limit - 1]["step"]:
        end += 1
    return records[:end]


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPublic,
    responses=responses(401, 404),
    summary="Training curve of a job",
)
def job_metrics(
    job_id: str,
    tenant: CurrentTenant,
    store: StoreDep,
    artifacts: ArtifactsDep,
    since: Annotated[int, Query(ge=-1, description="Only records with step > since.")] = -1,
    limit: Annotated[int, Query(ge=1, le=100_000, description="At most this many.")] = 10_000,
) -> MetricsPublic:
    """The logged steps of a job (loss, accuracy, budget fraction, beta, ...). Until the worker
    has written metrics.jsonl: what its heartbeats carry, the per-epoch history and the latest
    progress (kind "progress"), so that a client polling with `since` still draws a curve."""
    job = store.get_job(job_id, tenant, kind="train")  # a profile has no curve: 404
    if job is None:
        raise not_found("job")
    try:
        with artifacts.open(job_id, METRICS_FILE) as f:
            records = select(read_jsonl(f), since)
    except FileNotFoundError:
        records = select(heartbeat_records(job.metrics, job.progress), since)
    return MetricsPublic(data=first_page(records, limit), count=len(records))
