"""analysis overlays, thresholds and priority reasons

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 01:30:01.690639
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Existing rows get empty values; the old single heatmap reference moves into overlays under
    # the finding it was drawn for (the top finding), so nothing stored is lost.
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority_reasons", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("thresholds", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("overlays", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    analysis = sa.table("analysis", sa.column("id", sa.String), sa.column("top3", sa.JSON),
                        sa.column("heatmap_sha256", sa.String), sa.column("overlays", sa.JSON))
    bind = op.get_bind()
    for row in bind.execute(sa.select(analysis).where(analysis.c.heatmap_sha256.is_not(None))).all():
        if row.top3:
            bind.execute(analysis.update().where(analysis.c.id == row.id)
                         .values(overlays={row.top3[0]["finding"]: row.heatmap_sha256}))
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.drop_column("heatmap_sha256")


def downgrade() -> None:
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heatmap_sha256', sa.VARCHAR(length=64), nullable=True))
        batch_op.drop_column('overlays')
        batch_op.drop_column('thresholds')
        batch_op.drop_column('priority_reasons')

