"""``medrega-gateway`` command line (typer): the operator surface on top of every stage.

:mod:`gateway.cli.base` holds the application and ``--config`` handling, :mod:`gateway.cli.commands`
the commands, :mod:`gateway.cli.admin` the ``ae``/``dest``/``route`` groups and
:mod:`gateway.cli.api` the ``token`` group and ``api``. Nothing outside ``gateway`` imports it.
"""

from __future__ import annotations

import sys

import typer

from . import commands  # noqa: F401  (defines the commands on ``app`` and adds the groups)
from .base import EXIT_DATABASE, AppContext, _root, app, fail, get_settings

__all__ = ["app", "main", "AppContext", "get_settings", "fail", "_root"]


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def main(argv: list[str] | None = None) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="medrega-gateway")
    except (OperationalError, InterfaceError) as exc:
        # Raised where a command first connects: one line, not the driver's traceback.
        typer.echo(f"medrega-gateway: database.url: cannot connect to the database: {_first_line(exc)}",
                   err=True)
        raise SystemExit(EXIT_DATABASE) from None


if __name__ == "__main__":  # pragma: no cover
    main()
