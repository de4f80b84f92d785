"""``medrega-gateway`` command line (typer): the operator surface on top of every stage.

:mod:`gateway.cli.base` holds the application and ``--config`` handling, :mod:`gateway.cli.commands`
the commands, :mod:`gateway.cli.admin` the ``ae``/``dest``/``route`` groups and
:mod:`gateway.cli.api` the ``token`` group and ``api``. Nothing outside ``gateway`` imports it.
"""

from __future__ import annotations

import sys

import typer

from . import commands  # noqa: F401  (defines the commands on ``app`` and adds the groups)
from .base import EXIT_DATABASE, AppContext, _root, app, fail, get_settings, schema_advice

__all__ = ["app", "main", "config_first", "AppContext", "get_settings", "fail", "_root"]


CONFIG_OPTIONS = ("--config", "-c")


def config_first(argv: list[str]) -> list[str]:
    """``--config PATH`` (or ``-c PATH``, ``--config=PATH``) moved before the sub-command.

    The option belongs to the root command, where click only looks before the sub-command's name;
    an operator writes it anywhere (``medrega-gateway db upgrade --config gateway.toml``). Words
    after ``--`` are left alone.
    """
    moved: list[str] = []
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            rest.append(word)
            rest.extend(words)
            break
        if word in CONFIG_OPTIONS:
            value = next(words, None)
            moved.extend([word] if value is None else [word, value])
        elif word.startswith("--config="):
            moved.append(word)
        else:
            rest.append(word)
    return moved + rest


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _schema_advice() -> str | None:
    """The schema line if the running command's database lacks this gateway's schema."""
    from common import db

    obj = AppContext.current
    if obj is None or obj._settings is None:
        return None
    try:
        url = obj.settings.database_url
        current, head = db.current_revision(url), db.head_revision(url)
    except Exception:  # noqa: BLE001 - unreachable: the caller reports the connection error
        return None
    return None if current == head else schema_advice(obj, current, head)


def main(argv: list[str] | None = None) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

    args = argv if argv is not None else sys.argv[1:]
    try:
        app(args=config_first(args), prog_name="medrega-gateway")
    except (OperationalError, InterfaceError, ProgrammingError) as exc:
        advice = _schema_advice()  # e.g. "no such table": the schema, not the connection
        if advice is not None:
            typer.echo(f"medrega-gateway: {advice}", err=True)
            raise SystemExit(3) from None
        # Raised where a command first connects: one line, not the driver's traceback.
        typer.echo(f"medrega-gateway: database.url: cannot connect to the database: {_first_line(exc)}",
                   err=True)
        raise SystemExit(EXIT_DATABASE) from None


if __name__ == "__main__":  # pragma: no cover
    main()
