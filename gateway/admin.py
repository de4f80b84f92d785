"""Administration of AE titles, destinations and routes (shared by the CLI and the HTTP API).

The database is authoritative; the config file only seeds rows that are not there yet
(:func:`seed_from_settings`). Every function takes an open :class:`~sqlalchemy.orm.Session` and
leaves committing to the caller, so the CLI and the API decide the transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import CallingAE, ConfigSeed, Destination, Route
from common.settings import Settings, validate_ae_title

__all__ = [
    "AdminError",
    "NotFoundError",
    "AlreadyExistsError",
    "list_calling_aes",
    "add_calling_ae",
    "get_calling_ae",
    "update_calling_ae",
    "remove_calling_ae",
    "list_destinations",
    "get_destination",
    "add_destination",
    "update_destination",
    "set_destination_enabled",
    "set_calling_ae_enabled",
    "set_route_enabled",
    "remove_destination",
    "list_routes",
    "add_route",
    "get_route",
    "update_route",
    "remove_route",
    "seed_from_settings",
]

ROUTE_ACTIONS = ("process", "store", "ignore")
_ROUTE_FIELDS = ("order", "calling_ae_title", "modality", "sop_class_uid", "body_part_examined",
                 "series_description", "action", "urgent")
SEND_MODES = ("sr", "sr+gsps")


class AdminError(ValueError):
    """An administrative change was refused; the message says why."""


class NotFoundError(AdminError):
    pass


class AlreadyExistsError(AdminError):
    pass


_Row = TypeVar("_Row", CallingAE, Destination, Route)


def _set_enabled(session: Session, row: _Row, enabled: bool) -> _Row:
    row.enabled = enabled
    session.flush()
    return row


#: Longest name of a destination or route, their key (``common.models``: String(64)).
NAME_LENGTH = 64
#: What a name may not hold: control characters, nor ``/`` (it stands in the paths of the API and
#: the pages, which name a row by it).
NAME_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
#: Longest host name or address, and longest description (``common.models``: String(255)).
HOST_LENGTH = 255
#: What a host name or a description may not hold: control characters.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _name(what: str, value: str) -> str:
    """A destination's or route's name: 1-64 characters, no control character, no ``/``."""
    if not 1 <= len(value) <= NAME_LENGTH or not re.fullmatch(NAME_PATTERN, value):
        raise AdminError(f"{what} name must be 1-{NAME_LENGTH} characters without '/' or control characters")
    return value


def _text(what: str, value: str | None, *, required: bool = False) -> str | None:
    """A host or a description: at most 255 characters, no control character; empty is none."""
    if not value:
        if required:
            raise AdminError(f"{what} must be 1-{HOST_LENGTH} characters")
        return None
    if len(value) > HOST_LENGTH or not re.fullmatch(TEXT_PATTERN, value):
        raise AdminError(f"{what} must be 1-{HOST_LENGTH} characters without control characters")
    return value


def _ae_title(value: str) -> str:
    """``value`` checked as an AE title (PS3.5 6.2, VR AE), without its padding spaces."""
    try:
        return validate_ae_title(value)
    except ValueError as exc:
        raise AdminError(str(exc)) from None


def _check_port_and_send(port: int, send: str) -> None:
    if not 1 <= int(port) <= 65535:
        raise AdminError(f"port {port} is out of range 1-65535")
    if send not in SEND_MODES:
        raise AdminError(f"send must be one of {', '.join(SEND_MODES)}")


def _check_action(action: str) -> None:
    if action not in ROUTE_ACTIONS:
        raise AdminError(f"action must be one of {', '.join(ROUTE_ACTIONS)}")


def list_calling_aes(session: Session) -> Sequence[CallingAE]:
    return session.scalars(select(CallingAE).order_by(CallingAE.ae_title)).all()


def add_calling_ae(
    session: Session,
    ae_title: str,
    host: str | None = None,
    description: str | None = None,
    destinations: Sequence[str] = (),
) -> CallingAE:
    """Allow ``ae_title`` to associate (optionally only from ``host``)."""
    ae_title = _ae_title(ae_title)
    if session.scalar(select(CallingAE).where(CallingAE.ae_title == ae_title)):
        raise AlreadyExistsError(f"calling AE title {ae_title!r} already exists")
    _check_destinations(session, destinations)
    row = CallingAE(ae_title=ae_title, host=_text("host", host), description=_text("description", description),
                    destinations=list(destinations))
    session.add(row)
    session.flush()
    return row


def get_calling_ae(session: Session, ae_title: str) -> CallingAE:
    row = session.scalar(select(CallingAE).where(CallingAE.ae_title == ae_title.strip()))
    if row is None:
        raise NotFoundError(f"no calling AE title {ae_title!r}")
    return row


def update_calling_ae(
    session: Session,
    ae_title: str,
    host: str | None = None,
    description: str | None = None,
    destinations: Sequence[str] = (),
) -> CallingAE:
    """Change what is known of an allowed caller (the AE title is its key and stays)."""
    row = get_calling_ae(session, ae_title)
    _check_destinations(session, destinations)
    row.host = _text("host", host)
    row.description = _text("description", description)
    row.destinations = list(destinations)
    session.flush()
    return row


def set_calling_ae_enabled(session: Session, ae_title: str, enabled: bool) -> CallingAE:
    """A disabled caller is refused like an unknown one, and the allow-list stays enforced."""
    return _set_enabled(session, get_calling_ae(session, ae_title), enabled)


def remove_calling_ae(session: Session, ae_title: str) -> None:
    session.delete(get_calling_ae(session, ae_title))
    session.flush()


def list_destinations(session: Session) -> Sequence[Destination]:
    return session.scalars(select(Destination).order_by(Destination.name)).all()


def get_destination(session: Session, name: str) -> Destination:
    row = session.scalar(select(Destination).where(Destination.name == name))
    if row is None:
        raise NotFoundError(f"no destination named {name!r}")
    return row


def add_destination(
    session: Session,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    send: str = "sr",
    tls: bool = False,
) -> Destination:
    name = _name("destination", name)
    ae_title = _ae_title(ae_title)
    host = _text("host", host, required=True) or ""
    _check_port_and_send(port, send)
    if session.scalar(select(Destination).where(Destination.name == name)):
        raise AlreadyExistsError(f"destination {name!r} already exists")
    row = Destination(name=name, ae_title=ae_title, host=host, port=int(port), send=send, tls=tls)
    session.add(row)
    session.flush()
    return row


def update_destination(
    session: Session,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    send: str = "sr",
    tls: bool = False,
) -> Destination:
    """Change a destination's address or what it is sent (the name is its key and stays: its
    deliveries name it)."""
    row = get_destination(session, name)
    ae_title = _ae_title(ae_title)
    host = _text("host", host, required=True) or ""
    _check_port_and_send(port, send)
    row.ae_title, row.host, row.port, row.send, row.tls = ae_title, host, int(port), send, tls
    session.flush()
    return row


def set_destination_enabled(session: Session, name: str, enabled: bool) -> Destination:
    """Enable or disable a destination: routing leaves a disabled one out of new studies and the
    sender does not send to it (its pending deliveries fail with that reason)."""
    return _set_enabled(session, get_destination(session, name), enabled)


def remove_destination(session: Session, name: str) -> Sequence[int]:
    """Remove a destination; its ``pending`` and ``failed`` deliveries are cancelled with the reason
    "destination <name> removed" (instead of being retried for ever). Returns their ids."""
    from workflow.deliveries import cancel_for_destination

    row = get_destination(session, name)
    cancelled = cancel_for_destination(session, row.name)
    session.delete(row)
    session.flush()
    return cancelled


def list_routes(session: Session) -> Sequence[Route]:
    return session.scalars(select(Route).order_by(Route.order, Route.name)).all()


def add_route(session: Session, name: str, **fields: Any) -> Route:
    """Add a routing rule. ``fields``: order, calling_ae_title, modality, sop_class_uid,
    body_part_examined, series_description, action, urgent, destinations."""
    name = _name("route", name)
    if session.scalar(select(Route).where(Route.name == name)):
        raise AlreadyExistsError(f"route {name!r} already exists")
    _check_action(fields.get("action", "process"))
    _check_destinations(session, fields.get("destinations") or ())
    clean = {k: (v if v != "" else None) for k, v in fields.items()}
    clean["destinations"] = list(fields.get("destinations") or ())
    row = Route(name=name, **clean)
    session.add(row)
    session.flush()
    return row


def get_route(session: Session, name: str) -> Route:
    row = session.scalar(select(Route).where(Route.name == name))
    if row is None:
        raise NotFoundError(f"no route named {name!r}")
    return row


def update_route(session: Session, name: str, **fields: Any) -> Route:
    """Change a routing rule (the name is its key and stays); ``fields`` as :func:`add_route`."""
    row = get_route(session, name)
    _check_action(fields.get("action", row.action))
    _check_destinations(session, fields.get("destinations") or ())
    for key, value in fields.items():
        if key == "destinations":
            row.destinations = list(value or ())
        elif key in _ROUTE_FIELDS:
            setattr(row, key, value if value != "" else None)
        else:
            raise AdminError(f"a route has no field {key!r}")
    session.flush()
    return row


def set_route_enabled(session: Session, name: str, enabled: bool) -> Route:
    """A disabled route matches no study; routing goes on to the next route."""
    return _set_enabled(session, get_route(session, name), enabled)


def remove_route(session: Session, name: str) -> None:
    session.delete(get_route(session, name))
    session.flush()


def _check_destinations(session: Session, names: Sequence[str]) -> None:
    known = set(session.scalars(select(Destination.name)).all())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NotFoundError(f"unknown destination(s): {', '.join(unknown)}")


_SEED_LABELS = {"destination": "destination", "calling_ae": "calling AE", "route": "route"}


def seed_from_settings(session: Session, settings: Settings) -> list[str]:
    """Insert the config file's destinations, callers and routes that it has never seeded.

    The config file only seeds: a row it seeded once is the administrator's from then on, so one
    they changed stays changed and one they removed stays removed at the next start
    (:class:`~common.models.ConfigSeed`). A config row whose name the database already has (added
    with the CLI or the API) is left as it is and counts as seeded. Returns a description of each
    row added.
    """
    seeded = {(s.kind, s.name) for s in session.scalars(select(ConfigSeed))}
    wanted: list[tuple[str, str, Callable[[], object] | None]] = []
    have_dest = set(session.scalars(select(Destination.name)).all())
    for d in settings.destinations:
        wanted.append(("destination", d.name, None if d.name in have_dest else partial(
            add_destination, session, d.name, d.ae_title, d.host, d.port,
            send=d.send or settings.sender.send, tls=d.tls)))
    have_ae = set(session.scalars(select(CallingAE.ae_title)).all())
    for c in settings.callers:
        wanted.append(("calling_ae", c.ae_title, None if c.ae_title in have_ae else partial(
            add_calling_ae, session, c.ae_title, c.host, c.description, c.destinations)))
    have_route = set(session.scalars(select(Route.name)).all())
    for r in settings.routes:
        wanted.append(("route", r.name, None if r.name in have_route else partial(
            add_route, session, r.name, **r.model_dump(exclude={"name"}))))
    added: list[str] = []
    for kind, name, add in wanted:
        if (kind, name) in seeded:
            continue
        if add is not None:
            add()
            added.append(f"{_SEED_LABELS[kind]} {name}")
        session.add(ConfigSeed(kind=kind, name=name))
        seeded.add((kind, name))
    session.flush()
    return added
