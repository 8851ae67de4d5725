"""outbox_delivery.destination (ehr | pacs | ris) and one living study per SOP Instance UID

Revision ID: 0008_dicom
Revises: 0007_unusual_film

The one outbox now carries every outbound message of a report version: the EHR's Bundle, the
PACS's DICOM SR and Secondary Capture, the RIS's HL7 ORU. Existing rows were all EHR deliveries.
A DICOM instance received twice (resent by a modality, or routed by two nodes) is one study: the
partial unique index makes that hold under concurrency, on SQLite and PostgreSQL alike.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008_dicom"
down_revision: Union[str, None] = "0007_unusual_film"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LIVING = "deleted_at IS NULL AND sop_instance_uid IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("outbox_delivery") as batch:
        batch.add_column(sa.Column("destination", sa.String(length=16), nullable=False, server_default="ehr"))
        batch.create_index("ix_outbox_report_destination", ["report_id", "destination"])
    op.create_index("uq_study_living_sop_instance", "study", ["sop_instance_uid"], unique=True,
                    sqlite_where=sa.text(LIVING), postgresql_where=sa.text(LIVING))


def downgrade() -> None:
    op.drop_index("uq_study_living_sop_instance", table_name="study")
    with op.batch_alter_table("outbox_delivery") as batch:
        batch.drop_index("ix_outbox_report_destination")
        batch.drop_column("destination")
