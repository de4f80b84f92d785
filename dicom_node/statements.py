"""SQLAlchemy Core statements compiled once per dialect and run on the DBAPI connection.

The node files one instance row per C-STORE before it answers (PS3.4 B.2.2), and on that path
SQLAlchemy's execution layer (a ``Connection`` per checkout, an execution context, result
objects) costs about 250 us of CPU per instance, where SQLite itself takes 30 us
(``docs/benchmarks.md``). The few statements of the common case are therefore compiled by
SQLAlchemy once, for the engine's dialect, and executed on a DBAPI cursor: the SQL text, the
parameter style and each parameter's bind processing (DateTime and JSON columns, psycopg's bind
casts) are SQLAlchemy's own, only the per-call machinery is skipped. Everything else in the
project uses SQLAlchemy normally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["StatementError", "PreparedStatement", "dbapi_connection", "database_errors"]


class StatementError(RuntimeError):
    """A statement cannot be prepared for direct execution (unsupported bind parameters)."""


class PreparedStatement:
    """``statement`` compiled for ``dialect``; :meth:`execute` runs it on a DBAPI cursor.

    ``keys`` are the column keys an INSERT or UPDATE sets (as for ``Compiled.column_keys``);
    parameters are passed by their bind names (column keys, or ``bindparam`` names).
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Sequence[str] = ()) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        if not isinstance(compiled, SQLCompiler):  # DDL compiles with a DDLCompiler: no bind parameters
            raise StatementError(f"not a SQL statement: {type(compiled).__name__}")
        if compiled.escaped_bind_names:
            raise StatementError(f"bind names need escaping: {sorted(compiled.escaped_bind_names)}")
        if any(bind.expanding or bind.literal_execute for bind in compiled.binds.values()):
            raise StatementError("expanding or literal-execute parameters are not supported")
        self.sql: str = compiled.string
        self._positional = bool(compiled.positional)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ()) if self._positional else tuple(compiled.binds)
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters for ``values`` (every bind name must be present)."""
        processed = {
            name: (self._processors[name](values[name]) if name in self._processors else values[name])
            for name in self._names
        }
        if self._positional:
            return tuple(processed[name] for name in self._names)
        return processed

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        """Execute on ``cursor`` (a DBAPI cursor of the dialect's driver); returns the cursor."""
        cursor.execute(self.sql, self.parameters(values))
        return cursor


@contextlib.contextmanager
def dbapi_connection(engine: Engine) -> Iterator[Any]:
    """A DBAPI connection from ``engine``'s pool (returned, and reset, on exit)."""
    connection = engine.raw_connection()
    try:
        yield connection.driver_connection
    finally:
        connection.close()


def database_errors(engine: Engine) -> tuple[type[Exception], type[Exception]]:
    """The driver's ``(IntegrityError, OperationalError)`` classes (PEP 249)."""
    dbapi = engine.dialect.loaded_dbapi
    return dbapi.IntegrityError, dbapi.OperationalError
