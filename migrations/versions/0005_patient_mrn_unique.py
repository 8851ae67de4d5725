"""one living patient per MRN within its system, enforced by the database

Revision ID: 0005_mrn_unique
Revises: 0004_web

The registry already refuses a second patient with the same MRN; two registrations at the same
moment could both pass that check. A partial unique index (living patients with an MRN) closes
the race. Existing duplicates are not merged behind anyone's back: the upgrade stops and names them.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005_mrn_unique"
down_revision: Union[str, None] = "0004_web"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WHERE = "deleted_at IS NULL AND mrn IS NOT NULL"


def upgrade() -> None:
    duplicates = op.get_bind().execute(sa.text(
        f"SELECT mrn_system, mrn, COUNT(*) FROM patient WHERE {WHERE} GROUP BY mrn_system, mrn HAVING COUNT(*) > 1"
    )).all()
    if duplicates:
        listed = ", ".join(f"{system}|{mrn} ({n} patients)" for system, mrn, n in duplicates[:20])
        raise RuntimeError(f"cannot enforce one patient per MRN: merge or delete the duplicates first: {listed}")
    op.create_index("uq_patient_living_mrn", "patient", ["mrn_system", "mrn"], unique=True,
                    sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index("uq_patient_living_mrn", table_name="patient")
