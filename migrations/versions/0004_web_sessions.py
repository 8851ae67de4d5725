"""web_session: server-side login sessions of the web pages

Revision ID: 0004_web
Revises: 0003_fhir_store
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from cxr_fhir.records.types import UTCDateTime

revision: str = "0004_web"
down_revision: Union[str, None] = "0003_fhir_store"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
        sa.PrimaryKeyConstraint("token_sha256"),
    )
    op.create_index("ix_web_session_user_id", "web_session", ["user_id"], unique=False)
    op.create_index("ix_web_session_expires_at", "web_session", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_web_session_expires_at", table_name="web_session")
    op.drop_index("ix_web_session_user_id", table_name="web_session")
    op.drop_table("web_session")
