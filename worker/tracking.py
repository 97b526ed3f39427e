"""Experiment trackers a job writes to as it trains: TensorBoard event files beside
metrics.jsonl (`"training": {"tensorboard": true}`), and an MLflow run when
SPARTAN_MLFLOW_TRACKING_URI is set (params, per-step metrics, the report and the sparse model
as artifacts).

Both are optional extras of the worker and never fail a job: a tracker that cannot be imported
or reached says so in the job's log (a warning) and is dropped.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from spartan_service.jobs import report as r  # artifact names
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.models import Job
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.spec import JobSpec
from spartan_service.worker.training import LoopState

log = logging.getLogger(__name__)
SKIPPED = ("kind", "step", "epoch")
FINAL = ("accuracy", "dense_accuracy", "measured_latency", "dense_latency", "predicted_latency",
         "density")


class Tracker(Protocol):
    def records(self, records: list[dict[str, Any]]) -> None: ...
    def finish(self, status: str, summary: dict[str, float]) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record, named by kind: step/loss, epoch/val_accuracy."""
    prefix = "epoch" if record.get("kind") == "epoch" else "step"
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if k not in SKIPPED and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    """Event files in the job's artifact folder: `tensorboard --logdir SPARTAN_DATA_DIR/
    artifacts` shows every job as a run."""

    def __init__(self, artifacts: ArtifactStore, job: Job) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        # The writer needs a local folder; its files are copied into the job's artifacts
        # (any storage backend) after each batch of records and at the end.
        self.artifacts, self.job_id = artifacts, job.id
        self.scratch = Path(tempfile.mkdtemp(prefix="spartan-tensorboard-"))
        self.writer = SummaryWriter(log_dir=str(self.scratch), flush_secs=5)

    def _publish(self) -> None:
        for path in self.scratch.iterdir():
            if path.is_file():
                self.artifacts.write_bytes(self.job_id, path.name, path.read_bytes())

    def records(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, int(record["step"]))
        self.writer.flush()
        self._publish()

    def finish(self, status: str, summary: dict[str, float]) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        self.writer.add_text("status", status, 0)
        self.writer.close()
        self._publish()
        shutil.rmtree(self.scratch, ignore_errors=True)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A spec as MLflow params: dotted keys, values as text."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: str(value)[:500]}


class MLflow:
    """One MLflow run per job (a resumed attempt continues it), through MLflow's client with an
    explicit tracking URI: no process-wide state, so jobs of one worker never mix."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, settings: Settings, artifacts: ArtifactStore, job: Job) -> None:
        from mlflow.tracking import MlflowClient  # the [mlflow] extra

        uri = settings.mlflow_tracking_uri or ""
        if uri.startswith(("http://", "https://")):
            # MLflow's client retries an unreachable server for minutes; a job should not wait.
            httpx.get(f"{uri.rstrip('/')}/health", timeout=5.0).raise_for_status()
        self.client = MlflowClient(tracking_uri=uri)
        self.artifacts, self.job = artifacts, job
        experiment = self.client.get_experiment_by_name(settings.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(settings.mlflow_experiment))
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`spartan.job_id` = '{job.id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=job.name or job.id, tags={
                "spartan.job_id": job.id, "spartan.tenant": job.tenant})
            self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(job.spec).items()]
        for start in range(0, len(params), 100):  # MLflow's limit of params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.set_tag(self.run_id, "spartan.attempt", str(job.attempts))

    def records(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        metrics = []
        at = int(time.time() * 1000)  # records carry steps, not times: when they were sent
        for record in records:
            for tag, value in scalars(record).items():
                metrics.append(Metric(tag.replace("/", "_"), value, at, int(record["step"])))
        for start in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + self.BATCH])

    def finish(self, status: str, summary: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if summary:
            self.client.log_batch(self.run_id, metrics=[
                Metric(f"final_{k}", v, 0, 0) for k, v in summary.items()])
        with tempfile.TemporaryDirectory(prefix="spartan-mlflow-") as folder:
            for name in (r.REPORT, r.SPARSE_MODEL, r.METRICS):
                try:
                    data = self.artifacts.read_bytes(self.job.id, name)
                except FileNotFoundError:
                    continue
                (Path(folder) / name).write_bytes(data)
                self.client.log_artifact(self.run_id, str(Path(folder) / name))
        self.client.set_terminated(self.run_id, {"succeeded": "FINISHED", "failed": "FAILED",
                                                 "cancelled": "KILLED"}.get(status, "FAILED"))


class Trackers:
    """The job's trackers; `update` sends the metrics records not sent yet."""

    def __init__(self, items: list[Tracker]) -> None:
        self.items = items
        self.sent = 0

    @classmethod
    def for_job(cls, job: Job, spec: JobSpec, artifacts: ArtifactStore, settings: Settings
                ) -> Trackers:
        items: list[Tracker] = []
        if spec.training.tensorboard:
            try:
                items.append(TensorBoard(artifacts, job))
            except ImportError:
                log.warning("training.tensorboard is set but this worker has no tensorboard "
                            "package (pip install 'spartan-service[tensorboard]'); no event "
                            "files are written")
        if settings.mlflow_tracking_uri:
            try:
                items.append(MLflow(settings, artifacts, job))
            except ImportError:
                log.warning("SPARTAN_MLFLOW_TRACKING_URI is set but this worker has no mlflow "
                            "package (pip install 'spartan-service[mlflow]'); not tracked")
            except Exception as exc:  # noqa: BLE001 - an unreachable server must not fail a job
                log.warning("MLflow tracking at %s is unavailable, not tracked: %s",
                            settings.mlflow_tracking_uri, exc)
        return cls(items)

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.items):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - drop the tracker, keep training
                log.warning("%s tracking failed (%s: %s); it stops for this job",
                            type(tracker).__name__, what, exc)
                self.items.remove(tracker)

    def update(self, state: LoopState) -> None:
        new = state.records[self.sent:]
        self.sent = len(state.records)
        if new:
            self._each("metrics", lambda t: t.records(new))

    def finish(self, status: str, state: LoopState | None,
               results: dict[str, Any] | None = None) -> None:
        """Send what is left and close each tracker; `results` are the report's headline
        figures (spartan_service.jobs.results.summarize) of a succeeded job."""
        if state is not None:
            self.update(state)
        summary = {key: float(value) for key, value in (results or {}).items()
                   if key in FINAL and isinstance(value, (int, float))}
        self._each("finish", lambda t: t.finish(status, summary))


class TrackedCheckpoints:
    """The loop's checkpoints, sending the records logged since the last one to the trackers
    at each (epoch ends and every checkpoint_every steps)."""

    def __init__(self, inner: Any, trackers: Trackers) -> None:
        self.inner, self.trackers = inner, trackers

    def save(self, state: LoopState) -> None:
        self.inner.save(state)
        self.trackers.update(state)
