"""FHIR resource store (current versions, history, search index); patients without an MRN

Revision ID: 0003_fhir_store
Revises: 0002
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from cxr_fhir.records.types import UTCDateTime

revision: str = "0003_fhir_store"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "fhir_resource",
        sa.Column("resource_type", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", UTCDateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.String(8), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
    )
    op.create_index("ix_fhir_resource_last_updated", "fhir_resource", ["last_updated"])
    op.create_table(
        "fhir_resource_history",
        sa.Column("pk", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(40), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("last_updated", UTCDateTime(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.UniqueConstraint("resource_type", "resource_id", "version_id"),
    )
    op.create_index("ix_fhir_history_time", "fhir_resource_history", ["resource_type", "last_updated"])
    op.create_table(
        "fhir_index",
        sa.Column("pk", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(40), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=True),
        sa.Column("value", sa.String(255), nullable=True),
        sa.Column("raw", sa.String(255), nullable=True),
        sa.Column("date_lo", UTCDateTime(), nullable=True),
        sa.Column("date_hi", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_fhir_index_lookup", "fhir_index", ["resource_type", "param", "value"])
    op.create_index("ix_fhir_index_resource", "fhir_index", ["resource_type", "resource_id"])
    op.create_index("ix_fhir_index_date", "fhir_index", ["resource_type", "param", "date_lo"])
    with op.batch_alter_table("patient") as batch:
        batch.alter_column("mrn", existing_type=sa.String(64), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.alter_column("mrn", existing_type=sa.String(64), nullable=False)
    op.drop_table("fhir_index")
    op.drop_table("fhir_resource_history")
    op.drop_table("fhir_resource")
