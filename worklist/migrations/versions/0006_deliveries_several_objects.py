"""deliveries: several objects of a result per destination (SR and heatmap SCs)

An outbox row was one result's SR to one destination (unique result, destination). A
result may now also send a heatmap Secondary Capture of each evaluated image
(``heatmap_to_pacs``): rows are unique per result, destination and SOP Instance UID,
and say what they carry (``kind``: ``sr`` or ``heatmap_sc``; existing rows are SRs).
The downgrade deletes the heatmap rows, which the old schema cannot hold.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="sr")
        )
        batch_op.drop_constraint("uq_deliveries_result_destination", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_result_destination_object",
            ["result_id", "destination", "sop_instance_uid"],
        )


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE kind <> 'sr'")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint("uq_deliveries_result_destination_object", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_result_destination", ["result_id", "destination"]
        )
        batch_op.drop_column("kind")
