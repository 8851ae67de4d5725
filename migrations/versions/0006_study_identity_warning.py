"""study.identity_warning: a DICOM film whose header names the patient differently from the record

Revision ID: 0006_identity
Revises: 0005_mrn_unique

As PACS reconciliation does, the study is filed (its PatientID matched) but flagged for the doctor
to resolve; existing studies have no warning.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006_identity"
down_revision: Union[str, None] = "0005_mrn_unique"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("identity_warning", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.drop_column("identity_warning")
