"""audit_events: refuse INSERT OR REPLACE on SQLite

SQLite's REPLACE conflict resolution deletes the conflicting row without firing DELETE triggers
(they fire only with ``PRAGMA recursive_triggers``, which is off by default and per connection),
so ``INSERT OR REPLACE INTO audit_events`` with an existing id rewrote an audit row despite the
append-only triggers of 0001. A BEFORE INSERT trigger that refuses an id already present closes
that for every connection, whatever its pragmas. PostgreSQL has no REPLACE (its ``ON CONFLICT DO
UPDATE`` fires the UPDATE trigger of 0001), so nothing changes there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 21:50:00
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_APPEND_ONLY_MESSAGE = 'audit_events is append-only'


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute(
            "CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events "
            "WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id) "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute('DROP TRIGGER IF EXISTS audit_events_no_replace')
