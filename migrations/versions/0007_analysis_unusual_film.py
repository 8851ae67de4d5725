"""analysis.unusual_film and analysis.plausibility: the plausibility gate's flag and score

Revision ID: 0007_unusual_film
Revises: 0006_identity

The gate refuses only what is clearly not a chest radiograph; an atypical real film (portable AP
crowded with lines, wide borders) is analysed and flagged "unusual film, read with care".
Existing analyses were not flagged and have no score.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007_unusual_film"
down_revision: Union[str, None] = "0006_identity"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("analysis") as batch:
        batch.add_column(sa.Column("unusual_film", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("plausibility", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analysis") as batch:
        batch.drop_column("plausibility")
        batch.drop_column("unusual_film")
