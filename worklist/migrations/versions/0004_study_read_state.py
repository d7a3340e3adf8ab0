"""studies.read_state and the worklist's index

The reading state of each study (``unread`` without a study_reads row) is kept on the
study, so that the worklist's query reads only the studies in reading through
``ix_studies_read_state_received`` instead of every study the node ever received.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 22:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "studies",
        sa.Column("read_state", sa.String(length=16), server_default="unread", nullable=False),
    )
    op.execute(
        "UPDATE studies SET read_state = "
        "(SELECT study_reads.state FROM study_reads WHERE study_reads.study_id = studies.id) "
        "WHERE EXISTS (SELECT 1 FROM study_reads WHERE study_reads.study_id = studies.id)"
    )
    op.create_index(
        "ix_studies_read_state_received", "studies", ["read_state", "first_received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_studies_read_state_received", table_name="studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("read_state")
