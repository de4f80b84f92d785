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

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from common.settings import ConfigError, Settings, load_settings

__all__ = ["app", "AppContext", "get_settings", "fail"]

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

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                fail(f"configuration error: {exc}", code=2)
            _check_data_dir(self._settings.data_dir)
        return self._settings


#: Exit status of a ``storage.data_dir`` that cannot be used, and of an unreachable database.
EXIT_STORAGE, EXIT_DATABASE = 5, 4


def _check_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if needed and make sure files can be created in it (one line if not)."""
    import tempfile

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        fail(f"storage.data_dir: {data_dir}: {exc.strerror or exc}", code=EXIT_STORAGE)


def fail(message: str, code: int = 1) -> "typer.Exit":
    typer.echo(f"medrega-gateway: {message}", err=True)
    raise typer.Exit(code)


def get_settings(ctx: typer.Context) -> Settings:
    """Settings of the running command (validated once)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj.settings


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="gateway TOML file", envvar="MEDREGA_CONFIG")
    ] = None,
) -> None:
    ctx.obj = AppContext(config_path=config)
