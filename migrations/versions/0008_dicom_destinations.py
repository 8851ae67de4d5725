"""outbox_delivery.destination (ehr | pacs | ris) and one living study per SOP Instance UID

Revision ID: 0008_dicom
Revises: 0007_unusual_film

The one outbox now carries every outbound message of a report version: the EHR's Bundle, the
PACS's DICOM SR and Secondary Capture, the RIS's HL7 ORU. Existing rows were all EHR deliveries.
A DICOM instance received twice (resent by a modality, or routed by two nodes) is one study: the
partial unique index makes that hold under concurrency, on SQLite and PostgreSQL alike.

Before 0008 the same DICOM file uploaded twice for one patient made two living studies. Such
copies are resolved first: the oldest stays, the later ones are deleted logically (deleted_at,
deleted_by names this migration, their ImagingStudy leaves the FHIR API as deleted); nothing is
removed, and the index can then be built.
"""
from datetime import UTC, datetime
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008_dicom"
down_revision: Union[str, None] = "0007_unusual_film"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LIVING = "deleted_at IS NULL AND sop_instance_uid IS NOT NULL"


# A living study with the same SOP Instance UID that was filed earlier (ties broken by id).
LATER_COPY = ("deleted_at IS NULL AND sop_instance_uid IS NOT NULL AND EXISTS (SELECT 1 FROM study o "
              "WHERE o.sop_instance_uid = study.sop_instance_uid AND o.deleted_at IS NULL "
              "AND (o.created_at < study.created_at OR (o.created_at = study.created_at AND o.id < study.id)))")


def _retire_later_copies() -> None:
    bind = op.get_bind()
    now = sa.bindparam("now", datetime.now(UTC), type_=sa.DateTime(timezone=True))
    copies = [row[0] for row in bind.execute(sa.text(f"SELECT id FROM study WHERE {LATER_COPY}"))]
    if not copies:
        return
    ids = sa.bindparam("ids", copies, expanding=True)
    bind.execute(sa.text("UPDATE fhir_resource SET deleted = :yes, last_updated = :now "
                         "WHERE resource_type = 'ImagingStudy' AND id IN :ids")
                 .bindparams(now, ids, sa.bindparam("yes", True)))
    bind.execute(sa.text("UPDATE study SET deleted_at = :now, updated_at = :now, "
                         "deleted_by = 'migration 0008: a copy of an earlier study of this SOP Instance UID' "
                         "WHERE id IN :ids").bindparams(now, ids))


def upgrade() -> None:
    _retire_later_copies()
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
