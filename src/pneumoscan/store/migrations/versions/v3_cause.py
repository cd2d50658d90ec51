"""worklist_results.cause, cause_probability, cause_threshold: a flagged film's bacterial/viral pattern.

Revision ID: v3
Revises: v2
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v3"
down_revision = "v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows from before have no cause: "" and NULL, which is what a film without one stores.
    op.add_column("worklist_results", sa.Column("cause", sa.String(16), nullable=False, server_default=""))
    op.add_column("worklist_results", sa.Column("cause_probability", sa.Float(), nullable=True))
    op.add_column("worklist_results", sa.Column("cause_threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    refuse_downgrade(revision)
