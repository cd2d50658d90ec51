"""dicom_outbox: the DICOM node's SR and SC until the PACS has them; worklist_results.uid_conflict and an index on
sop_uid: a SOP Instance UID received again.

Revision ID: v5
Revises: v4
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v5"
down_revision = "v4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # LargeBinary: BLOB on SQLite, BYTEA on PostgreSQL. The UID's UNIQUE is a table constraint, as create_all
    # made it (PostgreSQL names it dicom_outbox_sop_instance_uid_key).
    op.create_table(
        "dicom_outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("worklist_results.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True, unique=True),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("next_attempt", sa.DateTime(), nullable=False),
        sa.Column("last_attempt", sa.DateTime(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("target", sa.String(128), nullable=False),
    )
    for column in ("result_id", "created", "state", "next_attempt"):
        op.create_index(f"ix_dicom_outbox_{column}", "dicom_outbox", [column])
    # Rows from before: no conflict known.
    op.add_column("worklist_results",
                  sa.Column("uid_conflict", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_worklist_results_sop_uid", "worklist_results", ["sop_uid"])


def downgrade() -> None:
    refuse_downgrade(revision)
