"""worklist_results.score_calibration: where the answering model's score was calibrated.

Revision ID: v4
Revises: v3
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v4"
down_revision = "v3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows from before do not say where their score was calibrated: "".
    op.add_column("worklist_results",
                  sa.Column("score_calibration", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    refuse_downgrade(revision)
