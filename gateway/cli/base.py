"""The root of ``medrega-gateway`` (typer): the application, ``--config`` and settings access.

Every command takes ``--config PATH`` (TOML; environment variables ``MEDREGA_<SECTION>__<KEY>``
override it). Settings are loaded and validated once, in :func:`_root`; a bad setting exits with
status 2 and one line naming the key. Sub-command groups live beside the code they drive and are
registered in :mod:`gateway.cli.commands`.

Start-up problems outside the file are one line too, with their own exit status: a
``storage.data_dir`` that cannot be created or written (5, checked when the settings are first
used) and a database that cannot be reached (4, whenever a command's connection fails).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn, Optional

import typer
from sqlalchemy.orm import Session

from common.settings import CONFIG_ENV, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from common.audit import SyslogAuditSender
    from common.models import AuditEvent

__all__ = ["app", "AppContext", "get_settings", "fail", "Refused", "audited_change", "CLI_ROLE"]

#: ``AuditEvent.role`` of a change made on the command line; its actor is the operating-system
#: user who ran the command (whoever can run it can reach the database: an administrator).
CLI_ROLE = "cli"

app = typer.Typer(
    name="medrega-gateway",
    help="PACS-integrated DICOM workflow service for the MedRegA model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class AppContext:
    config_path: Path | None
    _settings: Settings | None = None
    #: The running command's context (one command per process), for :func:`gateway.cli.main`.
    current: "ClassVar[AppContext | None]" = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                fail(f"configuration error: {exc}", code=2)
            if self.config_path is None:
                typer.echo(f"medrega-gateway: no --config and no {CONFIG_ENV}: built-in defaults "
                           f"and MEDREGA_* variables in use (storage.data_dir = "
                           f"{self._settings.data_dir.resolve()})", err=True)
            _check_data_dir(self._settings.data_dir)
        return self._settings

    def command(self, *args: str) -> str:
        """``args`` as a command line that runs as printed with this command's configuration."""
        import shlex

        config = [] if self.config_path is None else ["--config", str(self.config_path.resolve())]
        return shlex.join(["medrega-gateway", *config, *args])


#: Exit status of a ``storage.data_dir`` that cannot be used, and of an unreachable database.
EXIT_STORAGE, EXIT_DATABASE = 5, 4
#: Exit status of serve (with its worker) and worker when the model cannot be loaded.
EXIT_MODEL = 6


def _check_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if needed and make sure files can be created in it (one line if not)."""
    import tempfile

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        fail(f"storage.data_dir: {data_dir}: {exc.strerror or exc}", code=EXIT_STORAGE)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"medrega-gateway: {message}", err=True)
    raise typer.Exit(code)


class Refused(Exception):
    """A change asked on the command line that the command refuses; the message says why."""


@contextmanager
def audited_change(
    ctx: typer.Context,
    action: str,
    subject: dict[str, Any],
    refused: tuple[type[Exception], ...] = (),
    code: int = 1,
) -> Iterator[Session]:
    """One administrative change made on the command line, audited as the API audits its own.

    Yields the change's session. On success the audit event (``action``, the command and
    ``subject``, the operating-system user as actor) commits in the same transaction as the
    change; a refusal (:class:`Refused` or one of ``refused``) rolls the change back, is recorded
    with outcome ``failure`` and the reason in its own transaction, and ends the command with
    that reason in one line (exit ``code``).
    """
    from common import audit, db

    settings = get_settings(ctx)
    command = "medrega-gateway " + " ".join(ctx.command_path.split()[1:])
    actor = audit.operating_system_user()
    sender = audit.sender_from_settings(settings)
    caught: tuple[type[Exception], ...] = (Refused, *refused)
    try:
        with db.session_scope(settings.database_url) as session:
            yield session
            event = audit.record(session, actor=actor, role=CLI_ROLE, action=action,
                                 query=audit.query_text(command, subject=subject))
        _forward(sender, event)
    except caught as exc:
        with db.session_scope(settings.database_url) as session:
            event = audit.record(session, actor=actor, role=CLI_ROLE, action=action, outcome="failure",
                                 query=audit.query_text(command, subject=subject, error=str(exc)))
        _forward(sender, event)
        fail(str(exc), code=code)


def _forward(sender: SyslogAuditSender | None, event: AuditEvent) -> None:
    """Send a committed audit event to the configured syslog collector (``api.audit_syslog_host``),
    as the API sends its own; a collector that cannot be reached never undoes the change."""
    if sender is None:
        return
    try:
        sender.send(event)
    except OSError as exc:
        typer.echo(f"medrega-gateway: audit event recorded, but not sent to the syslog collector: {exc}", err=True)
    finally:
        sender.close()


def ensure_schema(ctx: typer.Context, *, create_if_empty: bool = False) -> None:
    """Refuse (exit 3, one line with the command to run) a database whose schema is not this
    gateway's; with ``create_if_empty`` an empty embedded (SQLite) database gets the schema
    created here, said in one line. A database behind the code is never migrated silently."""
    from common import db

    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    url = obj.settings.database_url
    current, head = db.current_revision(url), db.head_revision(url)
    if current == head:
        return
    if current is None and create_if_empty and url.startswith("sqlite") and db.is_empty(url):
        db.upgrade(url)
        typer.echo(f"medrega-gateway: empty embedded database {url.split('///', 1)[-1]}: "
                   f"schema created (revision {head})", err=True)
        return
    fail(schema_advice(obj, current, head), code=3)


def schema_advice(obj: AppContext, current: str | None, head: str | None) -> str:
    """The one line for a database whose schema is not the one this gateway needs."""
    return (f"database schema is at {current or 'nothing (empty database)'}, this gateway needs "
            f"{head}: run `{obj.command('db', 'upgrade')}`")


def get_settings(ctx: typer.Context) -> Settings:
    """Settings of the running command (validated once)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj.settings


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="gateway TOML file", envvar=CONFIG_ENV)
    ] = None,
) -> None:
    ctx.obj = AppContext.current = AppContext(config_path=config)
