"""worklist_results.thumbnail: a small preview of each film for the worklist.

Revision ID: v2
Revises: v1
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v2"
down_revision = "v1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOT NULL with a default fills the rows already there with "" (SQLite and PostgreSQL alike).
    op.add_column("worklist_results", sa.Column("thumbnail", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    refuse_downgrade(revision)
