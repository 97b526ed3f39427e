"""Profile jobs, the cost-model registry (versions, hardware) and deployment points.

jobs.kind tells training jobs from profile jobs (one queue, one claim/heartbeat machinery);
cost models get versions per (tenant, name), the hardware they were measured on and its
fingerprint; deployment_points hold each trained model's measured latency beside the cost
model's prediction.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False,
                                   server_default="train"))
        batch.create_index("ix_jobs_kind", ["kind"])
    with op.batch_alter_table("cost_models") as batch:
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("hardware", sa.JSON))
        batch.add_column(sa.Column("fingerprint", sa.String(64)))
        batch.add_column(sa.Column("hardware_label", sa.String(400)))
        batch.add_column(sa.Column("batch", sa.Integer))
        batch.add_column(sa.Column("source", sa.String(16), nullable=False,
                                   server_default="upload"))
        batch.add_column(sa.Column("parent_id", sa.String(32)))
        batch.add_column(sa.Column("profile_job_id", sa.String(32)))
        batch.add_column(sa.Column("refit", sa.JSON))
        batch.create_index("ix_cost_models_fingerprint", ["fingerprint"])
        batch.create_index("ix_cost_models_profile_job_id", ["profile_job_id"])
        batch.create_unique_constraint("uq_cost_models_tenant_name_version",
                                       ["tenant", "name", "version"])
    op.create_table(
        "deployment_points",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("cost_model_id", sa.String(32), nullable=False, index=True),
        sa.Column("tenant", sa.String(100), nullable=False, index=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("predicted", sa.Float, nullable=False),
        sa.Column("measured", sa.Float, nullable=False),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployment_points")
    with op.batch_alter_table("cost_models") as batch:
        batch.drop_constraint("uq_cost_models_tenant_name_version", type_="unique")
        batch.drop_index("ix_cost_models_profile_job_id")
        batch.drop_index("ix_cost_models_fingerprint")
        for column in ("refit", "profile_job_id", "parent_id", "source", "batch",
                       "hardware_label", "fingerprint", "hardware", "version"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_kind")
        batch.drop_column("kind")
