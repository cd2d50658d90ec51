"""worklist_results.times_received: the same input sent again is one result with a count.

Revision ID: v7
Revises: v6
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v7"
down_revision = "v6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every row from before was received once, as far as anyone knows.
    op.add_column("worklist_results",
                  sa.Column("times_received", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    refuse_downgrade(revision)
