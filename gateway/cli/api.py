"""Command-line entry points of the API: ``token`` (create, revoke, list) and ``api`` (serve).

:mod:`gateway.cli.commands` registers them on the main command::

    app.add_typer(token_app, name="token")
    app.command("api")(api_command)
"""

from __future__ import annotations

from typing import Annotated

import typer

from common import db
from gateway.cli.base import audited_change, ensure_schema, fail, get_settings
from ..tokens import ROLES, TokenError, create_token, list_tokens, revoke_token

__all__ = ["token_app", "api_command"]

token_app = typer.Typer(help="API tokens for auditors and administrators.", no_args_is_help=True)


def _ready_url(ctx: typer.Context) -> str:
    settings = get_settings(ctx)
    ensure_schema(ctx)
    return settings.database_url


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="who or what uses the token (unique)")],
    role: Annotated[str, typer.Option("--role", help=f"one of: {', '.join(ROLES)}")],
) -> None:
    """Create a token and print it once (only its SHA-256 hash is stored)."""
    _ready_url(ctx)
    with audited_change(ctx, "admin.token.create", {"name": name, "role": role},
                        (TokenError,), code=2) as session:
        token = create_token(session, name, role)
    typer.echo(f"token {name!r} ({role}) created; it is shown only now:", err=True)
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke the token called NAME (at once, for the API and the web pages)."""
    _ready_url(ctx)
    with audited_change(ctx, "admin.token.revoke", {"name": name}, (TokenError,)) as session:
        row = revoke_token(session, name)
        when = row.revoked_at
    typer.echo(f"token {name!r} revoked at {when:%Y-%m-%d %H:%M:%S} UTC")


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """Tokens: name, role, created, last used, revoked (never the token itself)."""
    url = _ready_url(ctx)
    with db.session_scope(url) as session:
        rows = list_tokens(session)
        lines = [
            "\t".join([
                r.name, r.role, f"{r.created_at:%Y-%m-%d %H:%M}",
                f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "never",
                f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active",
            ])
            for r in rows
        ]
    typer.echo("name\trole\tcreated\tlast used\tstate")
    for line in lines:
        typer.echo(line)


def _connect_delivery_retries(settings) -> None:
    """A delivery retried from the admin page is queued at once (the dispatcher would within a
    second or so anyway, since the retry leaves it pending and due)."""
    from workers.app import configure
    from workers.tasks import publish_delivery

    from gateway.api.hooks import set_enqueue_delivery

    configure(settings)
    set_enqueue_delivery(publish_delivery)


def api_command(
    ctx: typer.Context,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API and the web pages on api.host:api.port (uvicorn)."""
    import uvicorn

    from gateway.api.app import create_app

    settings = get_settings(ctx)
    ensure_schema(ctx, create_if_empty=True)
    _connect_delivery_retries(settings)
    try:
        application = create_app(settings)
    except db.SchemaNotCurrentError as exc:
        fail(str(exc), code=3)
    uvicorn.run(application, host=settings.api.host, port=settings.api.port,
                log_level=log_level.lower(), proxy_headers=False, server_header=False)
