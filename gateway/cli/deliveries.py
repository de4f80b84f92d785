"""``medrega-gateway deliveries list|retry|cancel``: results sent (or not) to destinations.

The rules are :mod:`workflow.deliveries`' (:func:`~workflow.deliveries.retry`,
:func:`~workflow.deliveries.cancel`), which the API and the pages call too; each change is audited
with the operating-system user as actor (:func:`gateway.cli.base.audited_change`). A retried
delivery is due at once: the dispatcher of ``serve`` publishes it.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from common.db import session_scope
from gateway.cli.base import audited_change, fail, get_settings

__all__ = ["deliveries_app"]

deliveries_app = typer.Typer(help="Deliveries of results to destinations: list, retry, cancel.",
                             no_args_is_help=True)


@deliveries_app.command("list")
def deliveries_list(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option(
        help="only deliveries in this state: pending, sent, failed, cancelled (comma-separated for several)")] = None,
    destination: Annotated[Optional[str], typer.Option(help="only deliveries to this destination")] = None,
    study: Annotated[Optional[str], typer.Option(help="only deliveries of this Study Instance UID")] = None,
    limit: int = 50,
    history: Annotated[bool, typer.Option("--history", help="also print every attempt and state change")] = False,
) -> None:
    """List the newest deliveries with their state and last error (the exact network error or
    DIMSE status of the last attempt)."""
    from gateway.api.query_deliveries import DeliveryFilters, list_deliveries, parse_states

    if state:
        try:
            parse_states(state)
        except ValueError as exc:
            fail(str(exc))
    settings = get_settings(ctx)
    filters = DeliveryFilters(state=state, destination_name=destination, study_instance_uid=study)
    with session_scope(settings.database_url) as session:
        rows, _ = list_deliveries(session, filters, limit=limit, cursor=None)
    if not rows:
        typer.echo("no deliveries" + (" match" if state or destination or study else ""))
        return
    typer.echo(f"{'id':>6}  {'state':<9}  {'destination':<16} {'tries':>5}  {'job':>5}  "
               f"{'updated (UTC)':<19}  study / last error")
    for d in rows:
        changed = d.events[-1].at if d.events else d.created_at
        typer.echo(f"{d.id:>6}  {d.state:<9}  {d.destination_name:<16} {d.attempts:>5}  {d.job_id:>5}  "
                   f"{changed.strftime('%Y-%m-%d %H:%M:%S')}  {d.study_instance_uid}")
        if d.state != "sent" and d.last_error:
            typer.echo(f"{'':>8}last error: {d.last_error[:300]}")
        if d.state == "cancelled" and d.events and d.events[-1].detail:
            typer.echo(f"{'':>8}cancelled: {d.events[-1].detail[:300]}")
        if history:
            for a in d.attempts_log:
                what = a.error or f"status 0x{a.status or 0:04X}"
                typer.echo(f"{'':>8}attempt {a.at.strftime('%Y-%m-%d %H:%M:%S')}  {what[:300]}")
            for e in d.events:
                typer.echo(f"{'':>8}{e.state:<9} {e.at.strftime('%Y-%m-%d %H:%M:%S')}  {(e.detail or '')[:300]}")


def _action(ctx: typer.Context, delivery_id: int, verb: str) -> None:
    """``retry`` and ``cancel``: :mod:`workflow.deliveries`' rules, as in the API and the pages."""
    from workflow import deliveries
    from workflow.states import TransitionError

    act = deliveries.retry if verb == "retry" else deliveries.cancel
    with audited_change(ctx, f"admin.delivery.{verb}", {"delivery_id": delivery_id},
                        (TransitionError,)) as session:
        act(session, delivery_id, "administrator (CLI)")
    typer.echo(f"delivery {delivery_id} " + ("is pending again (due now)" if verb == "retry" else "cancelled"))


@deliveries_app.command("retry")
def deliveries_retry(ctx: typer.Context, delivery_id: int) -> None:
    """Try a failed or cancelled delivery again (attempts cleared, due now); refused when it was
    sent or its destination was removed."""
    _action(ctx, delivery_id, "retry")


@deliveries_app.command("cancel")
def deliveries_cancel(ctx: typer.Context, delivery_id: int) -> None:
    """Cancel a pending or failed delivery: it is not attempted again (`retry` undoes it)."""
    _action(ctx, delivery_id, "cancel")
