"""The queue's definition: the Celery app, its queues and task names.

The API enqueues by task name and never imports the worker; the worker registers its tasks on
this app. JSON serialisation only: nothing from the broker is ever unpickled.
"""

from __future__ import annotations

import base64
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import filesystem

from spartan_service.jobs.settings import Settings, get_settings

RUN_JOB = "spartan.run_job"
REAP = "spartan.reap"
QUEUES = ("cpu", "gpu")
# The embedded broker's transport, by import path (Celery's broker_transport setting).
EMBEDDED_TRANSPORT = "spartan_service.jobs.queue:EmbeddedTransport"


class EmbeddedTransport(filesystem.Transport):
    """kombu's filesystem transport, with each wait for messages cut to `max_wait_s`.

    The transport is not asynchronous, so Celery runs the worker in its blocking loop, which
    calls drain_events(timeout=2.0) and looks at its shutdown flag only between calls: a
    SIGTERM to an idle worker waited up to 2 s for the wait to end. Shorter waits cost only a
    loop turn each (the transport polls the folder every polling_interval either way)."""

    max_wait_s = 0.2

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        if timeout is not None and timeout > self.max_wait_s:
            timeout = self.max_wait_s  # None (block until a message) is left alone
        return super().drain_events(connection, timeout=timeout, **kwargs)


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
        broker_transport=EMBEDDED_TRANSPORT if settings.embedded_broker else None,
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
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=settings.celery_events,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, queue: str, app: Celery | None = None) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; valid: {', '.join(QUEUES)}")
    (app or get_celery()).send_task(RUN_JOB, args=[job_id], queue=queue)


def waiting_job_ids(app: Celery | None = None) -> set[str]:
    """Ids of the jobs that have a run message in the broker: waiting in a queue, or (Redis)
    delivered to a worker and not yet acknowledged. The reaper re-enqueues a long-queued job
    only when its id is missing here. Raises NotImplementedError for a transport other than
    the filesystem queue and Redis."""
    with (app or get_celery()).connection_for_read() as conn:
        driver = conn.transport.driver_type
        if driver == "filesystem":
            messages = _filesystem_messages(conn.default_channel)
        elif driver == "redis":
            messages = _redis_messages(conn.default_channel)
        else:
            raise NotImplementedError(f"cannot list the messages of a {driver} broker")
    return {job_id for job_id in map(_job_id, messages) if job_id is not None}


def queue_depths(app: Celery | None = None) -> dict[str, int]:
    """Messages waiting in each queue (not yet delivered to a worker). Raises
    NotImplementedError for a transport other than the filesystem queue and Redis."""
    with (app or get_celery()).connection_for_read() as conn:
        driver = conn.transport.driver_type
        channel = conn.default_channel
        if driver == "filesystem":
            folder = Path(channel.data_folder_in)
            return {q: sum(1 for _ in folder.glob(f"*.{q}.msg")) for q in QUEUES}
        if driver == "redis":  # kombu's public count: a passive declare
            return {q: int(channel.queue_declare(queue=q, passive=True).message_count)
                    for q in QUEUES}
        raise NotImplementedError(f"cannot count the messages of a {driver} broker")


def _filesystem_messages(channel: Any) -> list[Any]:
    # One file per message, named "<ms>_<uuid>.<queue>.msg"; a taken one is moved away.
    names = {f"{queue}.msg" for queue in QUEUES}
    out = []
    for path in Path(channel.data_folder_in).iterdir():
        if path.name.partition(".")[2] not in names:
            continue
        try:
            out.append(json.loads(path.read_bytes()))
        except (OSError, ValueError):  # taken meanwhile, or still being written
            continue
    return out


def _redis_messages(channel: Any) -> list[Any]:
    # A queue is one list per priority step; a delivered message waits in the unacked hash
    # as [message, exchange, routing_key] until acknowledged (after its task, acks_late).
    keys = [_priority_key(channel, queue, pri) for queue in QUEUES
            for pri in channel.priority_steps]
    with channel.client.pipeline() as pipe:
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hvals(channel.unacked_key)
        *lists, unacked = pipe.execute()
    out = [_loads(raw) for items in lists for raw in items]
    for raw in unacked:
        entry = _loads(raw)
        out.append(entry[0] if isinstance(entry, list) and entry else None)
    return out


def _priority_key(channel: Any, queue: str, pri: int) -> str:
    """The Redis list of one priority step of a queue, as kombu's Redis transport names them
    (its documented `sep` and `priority_steps` transport options): the queue's name for
    priority 0, else name + sep + priority."""
    return queue if pri == 0 else f"{queue}{channel.sep}{pri}"


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _job_id(message: Any) -> str | None:
    """The job id of a run-job message (Celery protocol 2: the body is [args, kwargs, embed])."""
    try:
        if message["headers"]["task"] != RUN_JOB:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(json.loads(body)[0][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def ping_broker(app: Celery | None = None, timeout: float = 2.0) -> None:
    """Raise when the broker cannot be reached (for the filesystem queue: when its folders are
    gone or not writable, which "connecting" to it does not notice)."""
    app = app or get_celery()
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_out", "control_folder"):
        folder = options.get(key)
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
            raise OSError(f"the queue folder {folder} is missing or not writable")
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
