"""instance replacements: changed re-sends kept and recorded; studies.instances_changed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 22:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('instance_replacements',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('previous_study_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('previous_sha256', sa.String(length=64), nullable=False),
    sa.Column('previous_size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('kept_path', sa.String(length=512), nullable=True),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_instance_replacements_instance_id_instances')),
    sa.ForeignKeyConstraint(['previous_study_id'], ['studies.id'], name=op.f('fk_instance_replacements_previous_study_id_studies')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_instance_replacements_study_id_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance_replacements'))
    )
    with op.batch_alter_table('instance_replacements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_replacements_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_replacements_previous_study_id'), ['previous_study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_replacements_sop_instance_uid'), ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_replacements_study_id'), ['study_id'], unique=False)
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instances_changed', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('instances_changed')
    with op.batch_alter_table('instance_replacements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_replacements_study_id'))
        batch_op.drop_index(batch_op.f('ix_instance_replacements_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instance_replacements_previous_study_id'))
        batch_op.drop_index(batch_op.f('ix_instance_replacements_instance_id'))
    op.drop_table('instance_replacements')
