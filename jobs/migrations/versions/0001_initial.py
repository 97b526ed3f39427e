"""Initial schema: jobs, cost models, uploads.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("queue", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("warnings", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("resumed_from_step", sa.Integer),
        sa.Column("worker", sa.String(200)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("heartbeat_at", TS),
    )
    op.create_table(
        "cost_models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("name", sa.String(200)),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("profile", sa.JSON),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("filename", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("tensors", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_table("cost_models")
    op.drop_table("jobs")
