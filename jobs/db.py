"""The store's database plumbing: engines, schema migration, ids, and the one rule for reading
a row on a tenant's behalf (`owned`), which every store section uses."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.orm import Session

MIGRATIONS = Path(__file__).parent / "migrations"


def new_id() -> str:
    return uuid.uuid4().hex


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def plausible_id(value: str) -> bool:
    """Ids are ours (hex); anything else names nothing, and is never sent to the database
    (PostgreSQL refuses NUL characters with an error, not an empty result)."""
    return _ID.fullmatch(value) is not None


def page(s: Session, query: Select[Any], *order: Any, limit: int, offset: int = 0
         ) -> tuple[list[Any], int]:
    """One page of `query`'s rows in `order`, and how many rows the whole query has."""
    count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = s.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
    return list(rows), int(count)


class Owned(Protocol):
    tenant: str


def visible(row: Any, tenant: str | None, kind: str | None = None) -> bool:
    """Whether a row (ORM object or Core Row) may be shown to `tenant` (None: any tenant), and
    is of `kind` when one is asked: someone else's row is as absent as a missing one."""
    if tenant is not None and row.tenant != tenant:
        return False
    return kind is None or row.kind == kind


OwnedRow = TypeVar("OwnedRow", bound=Owned)


def owned(s: Session, model: type[OwnedRow], row_id: str, tenant: str | None,
          kind: str | None = None) -> OwnedRow | None:
    """The row of `model` with this id, if `visible` to `tenant`; else None."""
    if not plausible_id(row_id):
        return None
    row = s.get(model, row_id)
    return row if row is not None and visible(row, tenant, kind) else None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pooled connection per threadpool thread (anyio runs 40): past the default pool
        # of 5 + 10, each request would open a connection and run the pragmas below again.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=40, max_overflow=10)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes progress.
            cur = conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _journal_mode_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _journal_mode_wal(cur: Any, wait_s: float = 30.0) -> None:
    """Switch to WAL. The switch needs an exclusive lock and SQLite answers "database is
    locked" at once instead of waiting (the busy handler is not called), so processes that
    open a fresh file together retry; once one has switched, the pragma is a no-op."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# Any fixed number: the PostgreSQL advisory lock that one migration at a time holds.
_MIGRATION_LOCK = 0x5BA27A4


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest Alembic revision. Processes that start at
    once on a fresh database (an API and its workers, several API replicas) take turns: the
    others then find the schema at head (unserialised, one died creating alembic_version)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # held until this transaction ends
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        elif conn.dialect.name == "sqlite":  # a write lock now, not at the first DDL
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
