"""A job's log: the records a worker writes while it runs the job, stored with the job (the job
store's job_logs, bounded there) for `GET /v1/jobs/{id}/logs` and the job page.

One handler on the root logger serves every job of the process; the job a record belongs to is
the one the logging thread is running (a context variable set by `capture`). Records are kept
from INFO up for the project's own loggers, from WARNING up for any other (a library's warning,
a Python warning raised in the job), and written to the store in small batches.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from spartan_service.jobs.models import utcnow
from spartan_service.jobs.store import JobStore

OWN_LOGGERS = ("spartan", "spartan_service")
FLUSH_EVERY_S = 1.0
FLUSH_EVERY_RECORDS = 50


class _Capture:
    def __init__(self, store: JobStore, job_id: str, attempt: int) -> None:
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self.buffer: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.flushed_at = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.buffer.append(record)
            due = (len(self.buffer) >= FLUSH_EVERY_RECORDS
                   or time.monotonic() - self.flushed_at >= FLUSH_EVERY_S)
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.buffer = self.buffer, []
            self.flushed_at = time.monotonic()
        if not batch:
            return
        token = _writing.set(True)  # the store's own logging must not feed back in here
        try:
            self.store.append_logs(self.job_id, self.attempt, batch)
        except Exception:  # noqa: BLE001 - a log that cannot be stored must not fail the job
            logging.getLogger(__name__).debug("could not store %d log records of job %s",
                                              len(batch), self.job_id, exc_info=True)
        finally:
            _writing.reset(token)


_current: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "spartan_job_log", default=None)
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "spartan_job_log_writing", default=False)


def wanted(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
        return True
    return record.levelno >= logging.INFO and record.name.split(".")[0] in OWN_LOGGERS


def message(record: logging.LogRecord) -> str:
    """The message with its traceback (and stack) when the record has one."""
    text = record.getMessage()
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


class JobLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        capture = _current.get()
        if capture is None or _writing.get() or not wanted(record):
            return
        try:
            capture.add({"created_at": utcnow(), "level": record.levelname,
                         "logger": record.name, "message": message(record)})
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


_handler = JobLogHandler(level=logging.INFO)
_install_lock = threading.Lock()


def _route_warnings() -> None:
    """Python warnings raised while a job runs also go to its log (logger "py.warnings"). Done
    at each capture, not once: a test harness's catch_warnings puts the previous hook back."""
    previous = warnings.showwarning
    if getattr(previous, "spartan_job_log", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if _current.get() is not None:
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            logging.getLogger("py.warnings").warning("%s", text)
        previous(message, category, filename, lineno, file, line)

    show.spartan_job_log = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def install() -> None:
    """The handler on the root logger (once per process), warnings routed to logging."""
    with _install_lock:
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)
        _route_warnings()


@contextmanager
def capture(store: JobStore, job_id: str, attempt: int) -> Iterator[None]:
    """Records logged by this thread (and what it starts with a copied context) go to the
    job's log until the block ends."""
    install()
    job = _Capture(store, job_id, attempt)
    token = _current.set(job)
    try:
        yield
    finally:
        _current.reset(token)
        job.flush()


def flush() -> None:
    """Store what this thread's job has logged so far (before its record says it ended, so
    that a client reading the log after the end sees all of it)."""
    job = _current.get()
    if job is not None:
        job.flush()
