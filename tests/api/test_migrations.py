"""Migrations: up to head and down to base on SQLite and PostgreSQL; models match the migration."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError

from common.db import (
    SchemaNotCurrentError,
    check_schema_current,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from common.models import Base

#: Indexes the auditors' queries and the keyset pagination rely on (docs/benchmarks.md).
AUDITOR_INDEXES = {
    "findings": {"ix_findings_created_at_id"},
    "audit_events": {"ix_audit_events_at_id"},
    "studies": {"ix_studies_calling_ae_title"},
    "documents": {"ix_documents_id_job_id"},
}


def _roundtrip(url: str) -> None:
    with pytest.raises(SchemaNotCurrentError, match="db upgrade"):
        check_schema_current(url)

    upgrade(url)
    assert current_revision(url) == head_revision(url)
    check_schema_current(url)

    engine = make_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migration differ: {diff}"

    insp = inspect(engine)
    assert set(Base.metadata.tables) <= set(insp.get_table_names())
    for table, wanted in AUDITOR_INDEXES.items():
        assert wanted <= {ix["name"] for ix in insp.get_indexes(table)}

    # The audit log is append-only in the database as well.
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO audit_events (at, actor, action, outcome) "
            "VALUES (CURRENT_TIMESTAMP, 'tester', 'findings.search', 'success')"
        ))
    rewrites = ["UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"]
    if engine.dialect.name == "sqlite":
        # REPLACE deletes the old row without firing DELETE triggers (recursive_triggers is off).
        rewrites += [
            "INSERT OR REPLACE INTO audit_events (id, at, actor, action, outcome) "
            "VALUES ((SELECT id FROM audit_events), CURRENT_TIMESTAMP, 'mallory', 'x', 'success')",
            "REPLACE INTO audit_events (id, at, actor, action, outcome) "
            "VALUES ((SELECT id FROM audit_events), CURRENT_TIMESTAMP, 'mallory', 'x', 'success')",
        ]
    else:
        rewrites.append(
            "INSERT INTO audit_events (id, at, actor, action, outcome) "
            "SELECT id, CURRENT_TIMESTAMP, 'mallory', 'x', 'success' FROM audit_events "
            "ON CONFLICT (id) DO UPDATE SET actor = excluded.actor")
    for statement in rewrites:
        with pytest.raises(DatabaseError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT actor FROM audit_events")).scalars().all() == ["tester"]

    downgrade(url, "base")
    engine.dispose()
    assert current_revision(url) is None
    assert set(inspect(make_engine(url)).get_table_names()) <= {"alembic_version"}

    upgrade(url)  # and up again from base: the downgrade left nothing behind
    check_schema_current(url)


def test_sqlite_upgrade_downgrade_and_models_match(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_and_models_match(postgres_url: str) -> None:
    _roundtrip(postgres_url)
