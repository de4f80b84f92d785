"""config_seeds: what the config file has seeded, so that a removed row is not seeded again

Every destination, calling AE title and route already in the database counts as seeded: a row an
administrator removes after this upgrade stays removed, whether the config file names it or not.

Revision ID: 0010
Revises: 0009
"""
import datetime as dt
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: Union[str, None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

#: (kind in config_seeds, table, the column naming a row)
_KINDS = (('destination', 'destinations', 'name'), ('calling_ae', 'calling_aes', 'ae_title'),
          ('route', 'routes', 'name'))


def upgrade() -> None:
    op.create_table(
        'config_seeds',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('seeded_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_config_seeds')),
        sa.UniqueConstraint('kind', 'name', name=op.f('uq_config_seeds_kind')),
    )
    now = dt.datetime.now(dt.timezone.utc)
    for kind, table, column in _KINDS:
        op.get_bind().execute(sa.text(
            f"INSERT INTO config_seeds (kind, name, seeded_at) SELECT :kind, {column}, :now FROM {table}"),
            {"kind": kind, "now": now})


def downgrade() -> None:
    op.drop_table('config_seeds')
