"""The queue's definition: the Celery app, its queues and task names.

The API enqueues by task name and never imports the worker; the worker registers its tasks on
this app. JSON serialisation only: nothing from the broker is ever unpickled.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Exchange, Queue

from jobs.settings import Settings, get_settings

RUN_JOB = "spartan.run_job"
REAP = "spartan.reap"
QUEUES = ("cpu", "gpu")


def make_celery(settings: Settings) -> Celery:
    app = Celery("spartan")
    options: dict[str, object] = {}
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The filesystem transport polls; a short interval keeps submit-to-running quick.
            "polling_interval": 0.1,
        }
    else:
        # Redis redelivers an unacknowledged task after this; jobs run long, and a lost worker
        # is detected by the reaper from heartbeats instead (seconds, not an hour).
        options = {"visibility_timeout": 24 * 3600}
    app.conf.update(
        broker_url=settings.broker,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, queue: str, app: Celery | None = None) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; valid: {', '.join(QUEUES)}")
    (app or get_celery()).send_task(RUN_JOB, args=[job_id], queue=queue)


def ping_broker(app: Celery | None = None, timeout: float = 2.0) -> None:
    """Raise when the broker cannot be reached."""
    with (app or get_celery()).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
