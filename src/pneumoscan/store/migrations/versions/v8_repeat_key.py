"""worklist_results.repeat_key (unique): one row per input however many servers receive it at once.

Revision ID: v8
Revises: v7

The first revision written for alembic. The key names what makes a new row the repeat of an older one (an upload
answered the same way by the same model; a SOP Instance UID received again with the same bytes), so that two
servers on one database storing the same input at the same moment make one row, not two
(:mod:`pneumoscan.store.studies`). Rows from before keep no key (NULL, which a unique index allows many times):
the lookup by their columns still finds them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pneumoscan.store.migrations.policy import refuse_downgrade

revision = "v8"
down_revision = "v7"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("worklist_results", sa.Column("repeat_key", sa.String(64), nullable=True))
    op.create_index("ix_worklist_results_repeat_key", "worklist_results", ["repeat_key"], unique=True)


def downgrade() -> None:
    refuse_downgrade(revision)
