"""evaluation_runs: the model's validations on a site's labelled cases (medrega-gateway evaluate)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 22:30:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('evaluation_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('dataset_path', sa.String(length=1024), nullable=False),
    sa.Column('cases_sha256', sa.String(length=71), nullable=False),
    sa.Column('case_count', sa.Integer(), nullable=False),
    sa.Column('scored_count', sa.Integer(), nullable=False),
    sa.Column('skipped_count', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=16), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('weights_id', sa.String(length=128), nullable=False),
    sa.Column('plans_sha256', sa.String(length=71), nullable=False),
    sa.Column('prompts_sha256', sa.String(length=71), nullable=False),
    sa.Column('prompt_layout', sa.String(length=16), nullable=False),
    sa.Column('out_dir', sa.String(length=1024), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_runs'))
    )
    with op.batch_alter_table('evaluation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_evaluation_runs_finished_at_id', ['finished_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_runs_weights_id'), ['weights_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('evaluation_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluation_runs_weights_id'))
        batch_op.drop_index('ix_evaluation_runs_finished_at_id')
    op.drop_table('evaluation_runs')
