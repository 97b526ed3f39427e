"""A job's log: what the worker logs while running it, stored with the job and bounded."""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

import pytest

from spartan_service.jobs import store_extra
from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.worker import joblog
from spartan_service.worker.runner import run_job
from spartan_service.zoo import builtins
from tests.worker.conftest import Submit


def lines(store: JobStore, job_id: str) -> list[tuple[str, str, str]]:
    rows, _ = store.job_logs(job_id)
    return [(r.level, r.logger, r.message) for r in rows]


def test_a_failing_job_logs_its_warnings_and_traceback(
        submit: Submit, store: JobStore, artifacts: ArtifactStore, settings: Settings,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def explode(*args: Any, **kwargs: Any) -> None:
        logging.getLogger("somelib").info("chatter from a library")  # not the job's business
        logging.getLogger("somelib").warning("a library is unhappy")
        warnings.warn("odd input shape", UserWarning, stacklevel=1)
        raise RuntimeError("factory exploded")

    monkeypatch.setitem(builtins.BUILTINS, "mlp", explode)  # type: ignore[arg-type]
    job_id = submit()
    run_job(job_id, store, artifacts, settings)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed"
    got = lines(store, job_id)
    assert got[0][:2] == ("INFO", "spartan_service.worker.runner") and "attempt 1" in got[0][2]
    assert ("WARNING", "somelib", "a library is unhappy") in got
    assert any(level == "WARNING" and "odd input shape" in msg for level, _, msg in got)
    assert not any("chatter" in msg for *_, msg in got)
    level, logger, text = got[-1]
    assert (level, logger) == ("ERROR", "spartan_service.worker.runner")
    assert text.startswith(f"job {job_id} failed\nTraceback (most recent call last):")
    assert text.endswith("RuntimeError: factory exploded")
    # A second job of the same process has a log of its own.
    other = submit()
    run_job(other, store, artifacts, settings)
    assert all(job_id not in msg for *_, msg in lines(store, other))


def test_records_of_other_threads_stay_out(store: JobStore, submit: Submit) -> None:
    job_id = submit()
    log = logging.getLogger("spartan_service.worker.x")
    outside = threading.Thread(target=lambda: log.error("not mine"))
    with joblog.capture(store, job_id, 1):
        log.error("mine")
        outside.start()
        outside.join()
    assert [m for *_, m in lines(store, job_id)] == ["mine"]


def test_the_log_is_bounded(store: JobStore, submit: Submit,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_extra, "MAX_LOG_RECORDS", 5)
    monkeypatch.setattr(store_extra, "ERRORS_AFTER_LIMIT", 2)
    monkeypatch.setattr(store_extra, "MESSAGE_CHARS", 100)
    job_id = submit()
    info = [{"level": "INFO", "logger": "w", "message": f"line {i}"} for i in range(8)]
    assert store.append_logs(job_id, 1, info) == 5
    errors = [{"level": "ERROR", "logger": "w", "message": "x" * 300 + f"END{i}"}
              for i in range(3)]
    assert store.append_logs(job_id, 1, errors) == 2  # past the limit: errors only, 2 more
    got = lines(store, job_id)
    assert [m for *_, m in got[:5]] == [f"line {i}" for i in range(5)]
    assert got[5][2].startswith("x" * 25) and got[5][2].endswith("END0")  # head and tail kept
    assert "characters cut" in got[5][2] and len(got[5][2]) < 150
    rows, count = store.job_logs(job_id, since=0, limit=2)
    assert count == 7 and len(rows) == 2
    assert store.job_logs(job_id, since=rows[-1].id)[1] == 5
