"""Alembic environment: the URL comes from the caller (spartan_service.jobs.db.migrate)."""

from alembic import context

from spartan_service.jobs.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through spartan_service.jobs.db.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
