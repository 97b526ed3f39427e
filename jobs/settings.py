"""Settings from the environment (prefix SPARTAN_), shared by the API, the CLI and the workers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from spartan_service.jobs.admission import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    data_dir: Path = Path("spartan-data")
    database_url: str | None = None
    broker_url: str | None = None
    # "tenant:token,tenant:token"; empty means open access as tenant "default".
    api_tokens: str | None = None
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # An .npz upload's members, decompressed, all together (a zip bomb stops here).
    max_unpacked_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    # Bytes of uploads one tenant may keep (deleting uploads frees it).
    tenant_quota_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    # Processes of the API that fit cost models (each holds a core while it fits).
    fit_processes: int = Field(default=1, ge=1, le=64)
    # torch threads per worker process; 0 = leave one core to the API.
    worker_threads: int = Field(default=0, ge=0)
    progress_interval_s: float = Field(default=1.0, gt=0)
    # A running job whose heartbeat is older than this is taken to have lost its worker. Its
    # lease beats every min(progress_interval_s, heartbeat_timeout_s / 4) (worker/runner.py).
    heartbeat_timeout_s: float = Field(default=20.0, gt=0)
    # A job queued this long with no message in the broker (lost in a broker restart) is
    # enqueued again by the reaper.
    requeue_queued_after_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # MLflow tracking of every job (params, per-step metrics, report and sparse model) when set;
    # the workers need the [mlflow] extra.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "spartan"
    # Celery task events and worker heartbeats, for Flower (docs/monitoring.md); off by default:
    # the job store's heartbeats are what the service itself relies on.
    celery_events: bool = False
    # The most ranks one job may use on a worker (resources.processes); 0 = its devices: the
    # GPUs on the gpu queue, the CPU cores on the cpu queue. Advertised in the worker registry.
    worker_processes: int = Field(default=0, ge=0)
    # Where workers lock their devices (a profile job has its device alone): default
    # `locks/` under the data dir; see worker/device_lock.py.
    lock_dir: Path | None = None
    # Colon-separated directories that jobs may read data and models from (shared storage);
    # unset: no path is readable, only built-in datasets and uploads.
    data_roots: str | None = None
    # Whether the API checks paths it can see (existence, readability, columns) at submit; off
    # when the API does not mount the workers' storage (the roots are still checked by name).
    check_data: bool = True

    # Per-job limits, checked at submit (estimates) and by the worker before training; "N"
    # for every queue or "cpu:N,gpu:M". The defaults fit a worker of 2 cores and 24 GiB.
    max_job_params: str = "100000000"
    max_job_steps: str = "1000000"
    max_job_memory_bytes: str = str(8 * 1024**3)
    max_job_dataset_bytes: str = str(4 * 1024**3)
    # Fair scheduling: a worker defers a job of a tenant that already runs more jobs (or
    # started one more recently) than another tenant with jobs waiting on the same queue.
    fair_scheduling: bool = True

    @field_validator("max_job_params", "max_job_steps", "max_job_memory_bytes",
                     "max_job_dataset_bytes")
    @classmethod
    def _check_limits(cls, value: str) -> str:
        from spartan_service.jobs.admission import parse_queue_limits

        parse_queue_limits(value)
        return value

    def job_limits(self, queue: str) -> Limits:
        from spartan_service.jobs.admission import Limits, limit_for, parse_queue_limits

        def get(text: str) -> int:
            found = limit_for(parse_queue_limits(text), queue)
            return found if found is not None else 2**63 - 1

        return Limits(params=get(self.max_job_params), steps=get(self.max_job_steps),
                      memory_bytes=get(self.max_job_memory_bytes),
                      dataset_bytes=get(self.max_job_dataset_bytes))

    @field_validator("api_tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        if value:
            for pair in value.split(","):
                tenant, sep, token = pair.strip().partition(":")
                if not sep or not tenant or not token:
                    raise ValueError(
                        "SPARTAN_API_TOKENS must look like 'tenant:token,tenant:token'"
                    )
        return value or None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'spartan.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def broker_dir(self) -> Path:
        return self.data_dir.resolve() / "broker"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir.resolve() / "artifacts"

    @property
    def locks_dir(self) -> Path:
        return (self.lock_dir or self.data_dir / "locks").resolve()

    @property
    def uploads_dir(self) -> Path:
        """Where versions before the upload store kept uploads: adopted into it at start."""
        return self.data_dir.resolve() / "uploads"

    def roots(self) -> list[Path]:
        """SPARTAN_DATA_ROOTS as resolved directories (symlinks followed)."""
        if not self.data_roots:
            return []
        return [Path(p).expanduser().resolve() for p in self.data_roots.split(":") if p.strip()]

    def tokens(self) -> dict[str, str]:
        """token -> tenant."""
        if not self.api_tokens:
            return {}
        pairs = (p.strip().partition(":") for p in self.api_tokens.split(","))
        return {token: tenant for tenant, _, token in pairs}


@lru_cache
def get_settings() -> Settings:
    return Settings()
