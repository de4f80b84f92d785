"""installation: the UID root of this installation, generated once

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 22:20:00
"""
import datetime as dt
import uuid
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    table = op.create_table('installation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid_root', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_installation')),
    sa.UniqueConstraint('uid_root', name=op.f('uq_installation_uid_root'))
    )
    # Random (RFC 9562 version 4), made here once: no two installations share it, and every
    # later run of this installation reads the same value (common.uids derives from it).
    op.bulk_insert(table, [{'id': 1, 'uid_root': str(uuid.uuid4()), 'created_at': dt.datetime.now(dt.timezone.utc)}])


def downgrade() -> None:
    op.drop_table('installation')
