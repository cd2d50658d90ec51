"""The first tables: results, reviews, the audit log and the hand-written schema_version table.

Revision ID: v1
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # As pneumoscan's first schema made them (SQLAlchemy's create_all of that time), names included, so that a
    # database made then and one made by this revision are the same.
    op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
    )
    op.create_table(
        "worklist_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("category", sa.SmallInteger(), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("filename_hash", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("in_scope", sa.Boolean(), nullable=True),
        sa.Column("scope_reason", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("study_date", sa.String(16), nullable=False),
        sa.Column("age", sa.String(16), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.Column("view", sa.String(16), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
    )
    for column in ("created", "input_sha256", "patient_id", "accession", "study_uid"):
        op.create_index(f"ix_worklist_results_{column}", "worklist_results", [column])
    op.create_index("ix_worklist_results_order", "worklist_results", ["category", "probability"])
    op.create_table(
        "worklist_reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("worklist_results.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
    )
    op.create_index("ix_worklist_reviews_result_id", "worklist_reviews", ["result_id"])
    op.create_index("ix_worklist_reviews_created", "worklist_reviews", ["created"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_log_created", "audit_log", ["created"])
    op.create_index("ix_audit_log_result_id", "audit_log", ["result_id"])


def downgrade() -> None:
    refuse_downgrade(revision)
