"""``medrega-gateway ae|dest|route`` sub-commands: the PACS administrator's view of the node.

Thin wrappers around :mod:`gateway.admin` (the HTTP API uses the same functions). Changes apply to
the next association without restarting the node (:mod:`dicom_node.policy` reads the tables per
association). Registered by :mod:`gateway.cli.commands`::

    app.add_typer(ae_app, name="ae"); app.add_typer(dest_app, name="dest"); app.add_typer(route_app, name="route")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Optional

import typer
from sqlalchemy.orm import Session

from common.db import session_scope
from gateway import admin
from gateway.cli.base import audited_change, fail, get_settings

__all__ = ["ae_app", "dest_app", "route_app"]

ae_app = typer.Typer(help="Calling AE titles allowed to send studies (allow-list).", no_args_is_help=True)
dest_app = typer.Typer(help="Destinations (Storage SCPs) that receive the results.", no_args_is_help=True)
route_app = typer.Typer(help="Routing rules: which studies go to the model, results where.", no_args_is_help=True)


def _split(values: Optional[str]) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


# -- calling AE titles ----------------------------------------------------------------------------
@ae_app.command("list")
def ae_list(ctx: typer.Context) -> None:
    """List the calling AE titles (empty list and node.require_known_callers=false: anyone may send)."""
    settings = get_settings(ctx)
    with session_scope(settings.database_url) as session:
        rows = admin.list_calling_aes(session)
        if not rows:
            policy = ("nobody may send (node.require_known_callers = true)"
                      if settings.node.require_known_callers else "any calling AE title may send")
            typer.echo(f"no calling AE titles configured: {policy}")
            return
        typer.echo(f"{'AE title':<16}  {'host':<24}  {'destinations':<24}  enabled  description")
        for r in rows:
            typer.echo(f"{r.ae_title:<16}  {(r.host or '*'):<24}  {(','.join(r.destinations) or '(all)'):<24}  "
                       f"{'yes' if r.enabled else 'no ':<7}  {r.description or ''}")


@ae_app.command("add")
def ae_add(
    ctx: typer.Context,
    ae_title: str,
    host: Annotated[Optional[str], typer.Option(help="only from this IP address, CIDR network or host name")] = None,
    description: Annotated[Optional[str], typer.Option()] = None,
    destinations: Annotated[Optional[str], typer.Option(help="comma-separated destination names for its results")] = None,
) -> None:
    """Allow a calling AE title (once the list is non-empty, only listed titles may associate)."""
    subject = {"ae_title": ae_title, "host": host, "description": description,
               "destinations": _split(destinations)}
    with audited_change(ctx, "admin.calling_ae.add", subject, (admin.AdminError,)) as session:
        row = admin.add_calling_ae(session, ae_title, host, description, _split(destinations))
        added = f"added calling AE title {row.ae_title}" + (f" (from {row.host})" if row.host else "")
    typer.echo(added)


@ae_app.command("remove")
def ae_remove(ctx: typer.Context, ae_title: str) -> None:
    """Remove a calling AE title; its next association is rejected (if the list stays non-empty)."""
    with audited_change(ctx, "admin.calling_ae.remove", {"ae_title": ae_title},
                        (admin.AdminError,)) as session:
        admin.remove_calling_ae(session, ae_title)
    typer.echo(f"removed calling AE title {ae_title.strip()}")


# -- destinations ---------------------------------------------------------------------------------
@dest_app.command("list")
def dest_list(ctx: typer.Context) -> None:
    """List destinations."""
    settings = get_settings(ctx)
    with session_scope(settings.database_url) as session:
        rows = admin.list_destinations(session)
        if not rows:
            typer.echo("no destinations configured")
            return
        typer.echo(f"{'name':<20}  {'AE title':<16}  {'address':<28}  {'send':<7}  tls  enabled")
        for r in rows:
            typer.echo(f"{r.name:<20}  {r.ae_title:<16}  {f'{r.host}:{r.port}':<28}  {r.send:<7}  "
                       f"{'yes' if r.tls else 'no ':<3}  {'yes' if r.enabled else 'no'}")


@dest_app.command("add")
def dest_add(
    ctx: typer.Context,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    send: Annotated[str, typer.Option(help="sr or sr+gsps")] = "sr",
    tls: Annotated[bool, typer.Option("--tls/--no-tls", help="DICOM TLS (PS3.15 B.1)")] = False,
) -> None:
    """Add a destination (a Storage SCP, e.g. the PACS)."""
    subject = {"name": name, "ae_title": ae_title, "host": host, "port": port, "send": send, "tls": tls}
    with audited_change(ctx, "admin.destination.add", subject, (admin.AdminError,)) as session:
        admin.add_destination(session, name, ae_title, host, port, send=send, tls=tls)
    typer.echo(f"added destination {name} ({ae_title.strip()}@{host}:{port})")


@dest_app.command("remove")
def dest_remove(ctx: typer.Context, name: str) -> None:
    """Remove a destination; its pending and failed deliveries are cancelled ("destination NAME removed")."""
    subject: dict[str, object] = {"name": name}
    with audited_change(ctx, "admin.destination.remove", subject, (admin.AdminError,)) as session:
        cancelled = admin.remove_destination(session, name)
        subject["cancelled_deliveries"] = list(cancelled)
    typer.echo(f"removed destination {name}" + (f"; {len(cancelled)} pending or failed deliveries to it "
                                                 f"cancelled ({', '.join(map(str, cancelled))})" if cancelled else ""))


@dest_app.command("test")
def dest_test(ctx: typer.Context, name: str) -> None:
    """Send a C-ECHO to a destination and print the result (exit 1 unless it succeeds)."""
    from sender.scu import AssociationFailedError, DestinationNotFoundError, echo
    from dicom_node.tls import TLSConfigurationError

    settings = get_settings(ctx)
    try:
        status = echo(settings, name)
    except DestinationNotFoundError as exc:
        fail(str(exc))
    except (AssociationFailedError, TLSConfigurationError) as exc:
        fail(f"C-ECHO to {name} failed: {exc}")
    if status != 0x0000:
        fail(f"C-ECHO to {name}: status 0x{status:04X}")
    typer.echo(f"C-ECHO to {name}: success (status 0x0000)")


# -- routes ---------------------------------------------------------------------------------------
@route_app.command("list")
def route_list(ctx: typer.Context) -> None:
    """List routing rules in the order they are tried."""
    settings = get_settings(ctx)
    with session_scope(settings.database_url) as session:
        rows = admin.list_routes(session)
        if not rows:
            typer.echo("no routes: every study is processed and sent to every enabled destination")
            return
        for r in rows:
            criteria = ", ".join(
                f"{k}={getattr(r, k)}"
                for k in ("calling_ae_title", "modality", "sop_class_uid", "body_part_examined", "series_description")
                if getattr(r, k)
            ) or "(every study)"
            dest = ",".join(r.destinations) or "(default)"
            typer.echo(f"{r.order:>5}  {r.name:<20}  {r.action:<7} {'urgent ' if r.urgent else ''}-> {dest}   if {criteria}"
                       + ("" if r.enabled else "   (disabled)"))


@route_app.command("add")
def route_add(
    ctx: typer.Context,
    name: str,
    action: Annotated[str, typer.Option(help="process, store or ignore")] = "process",
    order: int = 100,
    calling_ae_title: Annotated[Optional[str], typer.Option()] = None,
    modality: Annotated[Optional[str], typer.Option(help="e.g. CT or CT,MR")] = None,
    sop_class_uid: Annotated[Optional[str], typer.Option()] = None,
    body_part_examined: Annotated[Optional[str], typer.Option()] = None,
    series_description: Annotated[Optional[str], typer.Option(help="glob (*chest*) or substring")] = None,
    urgent: Annotated[bool, typer.Option("--urgent/--not-urgent")] = False,
    destinations: Annotated[Optional[str], typer.Option(help="comma-separated destination names")] = None,
) -> None:
    """Add a routing rule (the first matching rule by order decides)."""
    fields = dict(action=action, order=order, calling_ae_title=calling_ae_title,
                  modality=modality, sop_class_uid=sop_class_uid,
                  body_part_examined=body_part_examined, series_description=series_description,
                  urgent=urgent, destinations=_split(destinations))
    with audited_change(ctx, "admin.route.add", {"name": name, **fields}, (admin.AdminError,)) as session:
        admin.add_route(session, name, **fields)
    typer.echo(f"added route {name}")


@route_app.command("remove")
def route_remove(ctx: typer.Context, name: str) -> None:
    """Remove a routing rule."""
    with audited_change(ctx, "admin.route.remove", {"name": name}, (admin.AdminError,)) as session:
        admin.remove_route(session, name)
    typer.echo(f"removed route {name}")


# -- enable / disable (the pages' switches, with the same audit actions) --------------------------
def _switch(ctx: typer.Context, prefix: str, what: str, setter: Callable[[Session, str, bool], object],
            name: str, enabled: bool) -> None:
    verb = "enable" if enabled else "disable"
    with audited_change(ctx, f"{prefix}.{verb}", {"name": name}, (admin.AdminError,)) as session:
        setter(session, name, enabled)
    typer.echo(f"{what} {name.strip()} {verb}d")


@ae_app.command("enable")
def ae_enable(ctx: typer.Context, ae_title: str) -> None:
    """Let a disabled calling AE title associate again."""
    _switch(ctx, "admin.calling_ae", "calling AE title", admin.set_calling_ae_enabled, ae_title, True)


@ae_app.command("disable")
def ae_disable(ctx: typer.Context, ae_title: str) -> None:
    """Refuse a calling AE title like an unknown one, keeping its entry (the allow-list stays enforced)."""
    _switch(ctx, "admin.calling_ae", "calling AE title", admin.set_calling_ae_enabled, ae_title, False)


@dest_app.command("enable")
def dest_enable(ctx: typer.Context, name: str) -> None:
    """Send results to a disabled destination again."""
    _switch(ctx, "admin.destination", "destination", admin.set_destination_enabled, name, True)


@dest_app.command("disable")
def dest_disable(ctx: typer.Context, name: str) -> None:
    """Leave a destination out of new studies' routing; the sender stops sending to it (its pending
    deliveries fail with that reason, to be retried once it is enabled again)."""
    _switch(ctx, "admin.destination", "destination", admin.set_destination_enabled, name, False)


@route_app.command("enable")
def route_enable(ctx: typer.Context, name: str) -> None:
    """Let a disabled routing rule match again."""
    _switch(ctx, "admin.route", "route", admin.set_route_enabled, name, True)


@route_app.command("disable")
def route_disable(ctx: typer.Context, name: str) -> None:
    """Make a routing rule match nothing, keeping it in its place."""
    _switch(ctx, "admin.route", "route", admin.set_route_enabled, name, False)
