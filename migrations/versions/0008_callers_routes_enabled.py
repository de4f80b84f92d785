"""calling AE titles and routes can be disabled (issue 17: enable/disable on the pages)

Existing rows stay enabled.

Revision ID: 0008
Revises: 0007
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    for table in ('calling_aes', 'routes'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('enabled', sa.Boolean(), nullable=False,
                                          server_default=sa.true()))


def downgrade() -> None:
    for table in ('calling_aes', 'routes'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('enabled')
