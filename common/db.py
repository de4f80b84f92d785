"""Database engine, sessions and schema version control (Alembic).

The schema is owned by the migrations in the ``migrations`` package, read from wherever it is
installed (importlib.resources), so a wheel installed with pip migrates as a checkout does.
:func:`check_schema_current` is called at start-up by every long-running command: a database that
is behind stops the process with the command to run (``medrega-gateway db upgrade``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "SchemaNotCurrentError",
    "MIGRATIONS_DIR",
    "make_engine",
    "session_factory",
    "session_scope",
    "alembic_config",
    "upgrade",
    "downgrade",
    "current_revision",
    "head_revision",
    "check_schema_current",
    "installation_uid_root",
]

#: The Alembic scripts: package data of the ``migrations`` package (a folder on disk in a checkout
#: and in an installed wheel alike, as Alembic needs).
MIGRATIONS_DIR = Path(str(files("migrations")))


class SchemaNotCurrentError(RuntimeError):
    """The database schema is older (or newer) than this version of the gateway expects."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
    cur = dbapi_connection.cursor()
    # WAL lets the node write while workers and the API read; busy_timeout waits for locks
    # instead of failing; foreign keys are off by default in SQLite. synchronous=FULL flushes
    # the WAL at each commit: the node answers a C-STORE only after its row is committed, and
    # with NORMAL a power cut could still lose that row (the instance's file would survive in
    # the spool, unknown to the database). It costs the node about 8 % on small instances.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@lru_cache(maxsize=8)
def make_engine(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(url), expire_on_commit=False)


@contextlib.contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    make_engine(url)  # creates the SQLite folder
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision(url: str = "sqlite://") -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    with make_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(url: str) -> bool:
    """True if the database holds no table at all (nothing to migrate, nothing to lose)."""
    with make_engine(url).connect() as conn:
        return not inspect(conn).get_table_names()


def check_schema_current(url: str) -> None:
    """Raise :class:`SchemaNotCurrentError` unless the database is at the head revision."""
    current, head = current_revision(url), head_revision(url)
    if current != head:
        raise SchemaNotCurrentError(
            f"database schema is at {current or 'nothing (empty database)'}, this gateway needs "
            f"{head}: run `medrega-gateway --config <your config> db upgrade`"
        )


def installation_uid_root(session: Session) -> str:
    """This installation's UID root (a UUID), the namespace of every UID it mints.

    Written once by the migration that created the ``installation`` table; see
    :class:`common.models.Installation` and :func:`common.uids.derive_uid`.
    """
    from .models import Installation

    row = session.get(Installation, 1)
    if row is None:
        raise SchemaNotCurrentError("the database has no installation row: run `medrega-gateway db upgrade`")
    return row.uid_root
