"""worklist_results.scope_caution: a chest film scored although unlike the training films.

Revision ID: v6
Revises: v5
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v6"
down_revision = "v5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows from before carry no caution: "" (the gate then had one verdict, and refused what it now cautions).
    op.add_column("worklist_results",
                  sa.Column("scope_caution", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    refuse_downgrade(revision)
