"""``medrega-gateway`` command line (typer).

Every command takes ``--config PATH`` (TOML; environment variables ``MEDREGA_<SECTION>__<KEY>``
override it). Settings are loaded and validated once, in :func:`_root`; a bad setting exits with
status 2 and one line naming the key. Sub-command groups live beside the code they drive and are
registered in :mod:`gateway.commands`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from .settings import ConfigError, Settings, load_settings

__all__ = ["app", "main", "AppContext", "get_settings", "fail"]

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
        return self._settings


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


def _register_groups() -> None:
    """Attach the commands and the groups that live beside the code they drive."""
    from . import commands  # noqa: F401  (defines commands on ``app`` and adds sub-apps)


def main(argv: list[str] | None = None) -> None:
    _register_groups()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="medrega-gateway")


if __name__ == "__main__":  # pragma: no cover
    main()
