"""``medrega-gateway status``: health of node, broker, database, workers and destinations."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.settings import Settings

__all__ = ["Check", "check_database", "check_broker", "check_workers", "check_node", "check_model",
           "check_destinations", "check_queue", "check_storage", "run_checks"]


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


class NodeCheckError(ConnectionError):
    """The node's C-ECHO self-check failed; the message says at which step and why."""


def _echo(host: str, port: int, called_ae: str, calling_ae: str) -> int:
    """C-ECHO (PS3.7 9.1.5) the node as its own AE title from loopback, which its association
    policy accepts for verification whatever the allow-list says (dicom_node.policy)."""
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise NodeCheckError(f"nothing accepts connections on {host}:{port}: "
                             f"{exc.strerror or exc} (is `medrega-gateway serve` running?)") from None
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        raise NodeCheckError(f"association rejected: {rj.result_str}, {rj.source_str}, {rj.reason_str}"
                             if rj is not None else "association rejected")
    if not assoc.is_established:
        raise NodeCheckError("association aborted or timed out before it was established")
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def check_node(settings: Settings) -> Check:
    host = "127.0.0.1" if settings.node.host in ("0.0.0.0", "::", "") else settings.node.host
    try:
        status = _echo(host, settings.node.port, settings.node.ae_title, settings.node.ae_title)
    except NodeCheckError as exc:
        return Check("node", False, f"C-ECHO to {host}:{settings.node.port} failed: {exc}")
    return Check("node", status == 0, f"C-ECHO {settings.node.ae_title}@{host}:{settings.node.port} status 0x{status:04X}")


def check_model(settings: Settings) -> Check:
    """The configured backend's model: for ``medrega`` the converted checkpoint at model.path
    (config, weight shards, tokenizer) without loading it; what to do when it is missing."""
    backend = settings.model.backend
    if backend != "medrega":
        what = {"tiny": "toy model of MedRegA's architecture, not for diagnosis",
                "replay": f"answers replayed from {settings.model.path or '(model.path empty)'}"}
        return Check("model", True, f"backend {backend}: {what.get(backend, '')}")
    from model.backends.base import ModelLoadError
    from model.backends.medrega import check_folder

    try:
        folder, config, files = check_folder(settings.model.path)
    except ModelLoadError as exc:
        return Check("model", False, str(exc))
    return Check("model", True, f"backend medrega: converted checkpoint {folder} "
                                f"({len(files)} weight file(s), {config.get('model_type')})")


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


def run_checks(settings: Settings, node_only: bool = False, destinations: bool = True) -> list[Check]:
    """What ``medrega-gateway status`` and the health page show: database, broker, workers, node,
    model, the queue and deliveries, storage, and (``destinations``) each destination by C-ECHO."""
    if node_only:
        return [check_node(settings)]
    checks = [check_database(settings), check_broker(settings), check_workers(settings), check_node(settings),
              check_model(settings)]
    database_ok = checks[0].ok
    if database_ok:
        checks.extend(check_queue(settings))
    checks.append(check_storage(settings))
    if database_ok and destinations:
        checks.extend(check_destinations(settings))
    return checks


def check_queue(settings: Settings) -> list[Check]:
    """Work waiting, from the database (what the ``medrega_jobs`` metric counts): jobs pending or
    queued (the queue length), running, and deliveries due, waiting for a retry or failed.
    Informational: a long queue is not "down"; failed deliveries are."""
    from sqlalchemy import func, select

    from common.db import session_scope
    from common.models import Delivery, DeliveryState, Job, JobState

    with session_scope(settings.database_url) as session:
        jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        # Grouped by the attempts themselves: PostgreSQL refuses ``attempts > 0`` in both the select
        # list and GROUP BY (each gets its own bound parameter).
        deliveries = [(state, attempts > 0, n) for state, attempts, n in session.execute(
            select(Delivery.state, Delivery.attempts, func.count())
            .group_by(Delivery.state, Delivery.attempts)).all()]
    n = {JobState(k).value: v for k, v in jobs.items()}
    waiting = n.get("pending", 0) + n.get("queued", 0)
    due = sum(c for state, tried, c in deliveries if DeliveryState(state) == DeliveryState.PENDING and not tried)
    retrying = sum(c for state, tried, c in deliveries if DeliveryState(state) == DeliveryState.PENDING and tried)
    failed = sum(c for state, _tried, c in deliveries if DeliveryState(state) == DeliveryState.FAILED)
    return [
        Check("queue", True, f"{waiting} job(s) waiting (pending {n.get('pending', 0)}, queued "
                             f"{n.get('queued', 0)}), {n.get('running', 0)} running, "
                             f"{n.get('failed', 0)} failed (to retry), {n.get('dead', 0)} dead"),
        Check("deliveries", failed == 0, f"{due} due, {retrying} waiting for a retry, {failed} failed"),
    ]


def _tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under ``folder``."""
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                continue
    return files, size


def check_storage(settings: Settings) -> Check:
    """Free space under ``storage.data_dir`` against ``node.minimum_free_disk_mb`` (below it the
    node refuses C-STORE with 0xA700), and the spool's size."""
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        return Check("storage", False, f"{data_dir} does not exist (serve creates it)")
    usage = shutil.disk_usage(data_dir)
    free_mb = usage.free / 1e6
    files, size = _tree_size(data_dir / "spool")
    detail = (f"{free_mb / 1000:.1f} GB free of {usage.total / 1e9:.1f} GB under {data_dir} "
              f"(C-STORE refused below {settings.node.minimum_free_disk_mb:.0f} MB); spool "
              f"{files} file(s), {size / 1e6:.1f} MB")
    return Check("storage", free_mb >= settings.node.minimum_free_disk_mb, detail)
