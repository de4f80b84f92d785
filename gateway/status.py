"""``medrega-gateway status``: health of node, broker, database, workers and destinations."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import Settings

__all__ = ["Check", "check_database", "check_broker", "check_workers", "check_node", "check_destinations",
           "run_checks"]


@dataclass(frozen=True)
class Check:
    component: str
    ok: bool
    detail: str


def check_database(settings: Settings) -> Check:
    from common import db

    try:
        db.check_schema_current(settings.database_url)
    except db.SchemaNotCurrentError as exc:
        return Check("database", False, str(exc))
    except Exception as exc:  # noqa: BLE001 - any connection error is "down"
        return Check("database", False, f"unreachable: {type(exc).__name__}: {exc}")
    return Check("database", True, f"schema at {db.head_revision()}")


def check_broker(settings: Settings) -> Check:
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001
        return Check("broker", False, f"unreachable: {type(exc).__name__}: {exc}")
    where = "embedded (SQLite)" if settings.embedded_broker else settings.broker_url.split("@")[-1]
    return Check("broker", True, where)


def check_workers(settings: Settings) -> Check:
    if settings.embedded_broker:
        return Check("workers", True, "embedded: the worker runs inside `serve`")
    from workers.app import celery_app, configure

    configure(settings)
    try:
        replies = celery_app.control.ping(timeout=2.0)
    except Exception as exc:  # noqa: BLE001
        return Check("workers", False, f"cannot ask: {type(exc).__name__}: {exc}")
    names = sorted(name for reply in replies for name in reply)
    return Check("workers", bool(names), f"{len(names)} answering: {', '.join(names)}" if names else "none answering")


def _echo(host: str, port: int, called_ae: str, calling_ae: str) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError("association rejected or aborted")
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def check_node(settings: Settings) -> Check:
    host = "127.0.0.1" if settings.node.host in ("0.0.0.0", "::", "") else settings.node.host
    try:
        status = _echo(host, settings.node.port, settings.node.ae_title, settings.node.ae_title)
    except Exception as exc:  # noqa: BLE001
        return Check("node", False, f"C-ECHO to {host}:{settings.node.port} failed: {exc}")
    return Check("node", status == 0, f"C-ECHO {settings.node.ae_title}@{host}:{settings.node.port} status 0x{status:04X}")


def check_destinations(settings: Settings) -> list[Check]:
    """C-ECHO every enabled destination, as ``dest test`` does (PS3.4 A)."""
    from sqlalchemy import select

    from sender.scu import SenderError, echo

    from common.db import session_scope
    from common.models import Destination

    with session_scope(settings.database_url) as session:
        destinations = [(d.name, f"{d.ae_title}@{d.host}:{d.port}") for d in
                        session.scalars(select(Destination).where(Destination.enabled.is_(True))).all()]
    checks = []
    for name, where in destinations:
        try:
            status = echo(settings, name)
            checks.append(Check(f"destination {name}", status == 0, f"C-ECHO {where} 0x{status:04X}"))
        except (SenderError, OSError) as exc:
            checks.append(Check(f"destination {name}", False, f"C-ECHO {where} failed: {exc}"))
    return checks


def run_checks(settings: Settings, node_only: bool = False) -> list[Check]:
    if node_only:
        return [check_node(settings)]
    checks = [check_database(settings), check_broker(settings), check_workers(settings), check_node(settings)]
    if checks[0].ok:
        checks.extend(check_destinations(settings))
    return checks
