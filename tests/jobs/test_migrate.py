"""Schema migration when several processes start at once on a fresh database (an API and its
workers started together, as containers are): each migrates, none fails, the schema ends at head."""

from __future__ import annotations

import multiprocessing
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from spartan_service.jobs.db import make_engine, migrate

POSTGRES_URL = os.environ.get("SPARTAN_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _migrate(url: str, barrier: Any, errors: Any) -> None:
    engine = make_engine(url)
    barrier.wait()
    try:
        migrate(engine)
    except Exception as exc:  # noqa: BLE001 - the test reports it
        errors.put(repr(exc))
    finally:
        engine.dispose()


def migrate_at_once(url: str, processes: int = 4) -> list[str]:
    """Run `migrate` in `processes` processes released together (Alembic's context is global to
    a process, so threads would not test what containers do); the errors they raised."""
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_migrate, args=(url, barrier, errors)) for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)  # a guard against a deadlock, not a timing
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    found = []
    while not errors.empty():
        found.append(errors.get())
    engine = make_engine(url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert "jobs" in tables and len(versions) == 1, (tables, versions)
    return found


def test_sqlite_migrated_by_many_at_once(tmp_path: Path) -> None:
    assert migrate_at_once(f"sqlite:///{tmp_path / 'fresh.db'}") == []


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin = POSTGRES_URL.replace("+psycopg", "")
    name = f"spartan_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {admin} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {admin} is unreachable: {exc}")
    try:
        yield re.sub(r"/[^/]*$", f"/{name}", POSTGRES_URL)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_migrated_by_many_at_once(fresh_postgres: str) -> None:
    assert migrate_at_once(fresh_postgres) == []
