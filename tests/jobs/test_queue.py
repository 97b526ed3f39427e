"""The embedded broker's transport: short waits, so an idle worker notices a shutdown soon."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kombu.transport import filesystem

from spartan_service.jobs.queue import EmbeddedTransport, enqueue_job, make_celery, waiting_job_ids
from spartan_service.jobs.settings import Settings


def test_embedded_broker_waits_at_most_max_wait_s(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    def drain(self: object, connection: object, timeout: object = None, **kw: object) -> None:
        asked.append(timeout)
        raise TimeoutError

    monkeypatch.setattr(filesystem.Transport, "drain_events", drain)
    app = make_celery(Settings(data_dir=tmp_path, database_url=None, broker_url=None))
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, EmbeddedTransport)
        for timeout in (2.0, 0.05, None):  # Celery's blocking loop asks for 2 s
            with pytest.raises(socket.timeout):
                conn.transport.drain_events(conn.connection, timeout=timeout)
    assert asked == [EmbeddedTransport.max_wait_s, 0.05, None]


def test_embedded_broker_still_delivers_and_lists_messages(tmp_path: Path) -> None:
    app = make_celery(Settings(data_dir=tmp_path, database_url=None, broker_url=None))
    enqueue_job("job1", "cpu", app=app)
    assert waiting_job_ids(app) == {"job1"}  # still read as a filesystem queue
    got: list[object] = []
    with app.connection_for_read() as conn:
        with conn.Consumer(app.amqp.queues["cpu"], callbacks=[lambda body, m: got.append(body)]):
            conn.drain_events(timeout=2.0)
    assert got and got[0][0] == ["job1"]  # type: ignore[index]


def test_redis_broker_keeps_kombu_s_transport() -> None:
    app = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_transport is None


def test_celery_events_only_when_asked(tmp_path: Path) -> None:
    from spartan_service.jobs.queue import make_celery
    from spartan_service.jobs.settings import Settings

    quiet = make_celery(Settings(data_dir=tmp_path, broker_url=None))
    assert quiet.conf.worker_send_task_events is False and quiet.conf.task_send_sent_event is False
    flower = make_celery(Settings(data_dir=tmp_path, broker_url=None, celery_events=True))
    assert flower.conf.worker_send_task_events is True and flower.conf.task_send_sent_event is True
