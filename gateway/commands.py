"""The commands of ``medrega-gateway`` (registered on :data:`gateway.cli.app`)."""

from __future__ import annotations

import typer

from .cli import app, get_settings

__all__: list[str] = []


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Validate the configuration and print it as the gateway sees it."""
    typer.echo(get_settings(ctx).model_dump_json(indent=2))
