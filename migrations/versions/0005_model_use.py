"""model runs: plan, prompt, training set, window, view, truncation, removed sentences;
image_selections: every image chosen or left out, with the reason (issue 14)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 22:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('model_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('prompt_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('training_set', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('window', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('view', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('truncated', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('removed_sentences', sa.JSON(), nullable=True))

    op.create_table('image_selections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=True),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('frame_number', sa.Integer(), nullable=True),
    sa.Column('chosen', sa.Boolean(), nullable=False),
    sa.Column('plan', sa.String(length=64), nullable=True),
    sa.Column('view', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_image_selections_instance_id_instances')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_image_selections_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_selections'))
    )
    with op.batch_alter_table('image_selections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_selections_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_selections_job_id'), ['job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('image_selections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_selections_job_id'))
        batch_op.drop_index(batch_op.f('ix_image_selections_instance_id'))
    op.drop_table('image_selections')
    with op.batch_alter_table('model_runs', schema=None) as batch_op:
        for column in ('removed_sentences', 'truncated', 'view', 'window', 'training_set', 'prompt_id', 'plan'):
            batch_op.drop_column(column)
