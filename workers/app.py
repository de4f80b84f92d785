"""The Celery application, configured from :class:`common.settings.Settings`.

Queues (issue 7 "one GPU queue per model and a CPU queue"):

- ``gpu.<backend>`` — :func:`workers.tasks.process_study` (inference, then SR writing);
- ``cpu`` — :func:`workers.tasks.deliver_document` (C-STORE of results).

Tasks are acknowledged late and rejected when the worker is lost, so a job whose worker dies is
delivered again (after the broker's visibility timeout); the tasks themselves are idempotent
(see :mod:`workers.tasks`). The embedded broker is kombu's SQLAlchemy transport on SQLite under
``storage.data_dir``: it needs no server and keeps queued messages across a restart.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from common.settings import Settings

__all__ = ["celery_app", "configure", "settings", "gpu_queue", "CPU_QUEUE", "NotConfiguredError", "json_logs"]

log = logging.getLogger(__name__)

CPU_QUEUE = "cpu"

celery_app = Celery("medrega_gateway", include=["workers.tasks"])

_settings: Settings | None = None


class NotConfiguredError(RuntimeError):
    """A task ran in a process where :func:`configure` was never called."""


def gpu_queue(settings: Settings) -> str:
    return f"gpu.{settings.model.backend}"


def configure(settings: Settings) -> Celery:
    """Point the Celery app at the configured broker; call once per process at start-up."""
    global _settings
    _settings = settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    transport_options: dict[str, object] = {}
    if settings.queue.broker_url.startswith("redis"):
        transport_options["visibility_timeout"] = settings.queue.visibility_timeout_s
        # kombu looks for unacknowledged messages of dead workers every 10 s but, by default,
        # scans only on every 10th look: a killed worker's message could wait ~100 s past the
        # visibility timeout (seen as a flaky tests/faults/test_worker_killed.py). Scan each time:
        # one ZRANGE every 10 s per worker.
        transport_options["unacked_restore_throttle"] = 1
        # Priorities 0-9 on Redis (issue 7: urgent studies first); lower number = sooner.
        transport_options.update({"queue_order_strategy": "priority", "priority_steps": list(range(10)),
                                  "sep": ":"})
    celery_app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.queue.task_time_limit_s,
        task_soft_time_limit=max(1, settings.queue.task_time_limit_s - 60),
        task_default_queue=CPU_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return celery_app


def json_logs() -> bool:
    """True when this process logs JSON lines (``logging.format = "json"``)."""
    return _settings is not None and _settings.logging.format == "json"


# -- Celery's own output in the gateway's log format ----------------------------------------------
# The gateway configures logging itself (common.logs.configure_logging, before the worker starts):
# a receiver of ``setup_logging`` tells Celery to configure none (no handler, format or stdout
# redirection of its own; worker_hijack_root_logger is off too), so Celery's records go through the
# gateway's handler, JSON or text. With JSON, Celery's prints to stdout go as well: the worker runs
# quiet (no banner; workers.embedded logs one line instead) and its shutdown and Ctrl+C messages
# become log records.

@signals.setup_logging.connect
def _keep_the_gateway_logging(**_: Any) -> None:
    """Celery's logging set-up: nothing (see above)."""


@signals.celeryd_after_setup.connect
def _redirect_prints(instance: Any = None, **_: Any) -> None:
    """What tasks print goes to the log (logger ``celery.redirected``), as Celery does when it
    configures logging itself."""
    if instance is not None and getattr(instance, "redirect_stdouts", True):
        celery_app.log.redirect_stdouts(getattr(instance, "redirect_stdouts_level", "WARNING"))


@signals.worker_ready.connect
def _shutdown_messages_as_records(sender: Any = None, **_: Any) -> None:
    if not json_logs():
        return
    from celery.apps import worker as celery_worker

    worker = getattr(sender, "controller", sender)

    def on_sigint(w: Any) -> None:
        log.warning("worker: Ctrl+C again will initiate a cold shutdown, terminating all running tasks")
        celery_worker.install_worker_term_hard_handler(w, sig="SIGINT", verbose=False)

    celery_worker.install_worker_term_handler(worker, verbose=False)
    celery_worker.install_worker_int_handler(worker, callback=on_sigint, verbose=False)


@signals.worker_shutting_down.connect
def _log_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    if json_logs():
        log.info("worker: %s shutdown (%s)", how.lower(), sig)


def settings() -> Settings:
    if _settings is None:
        raise NotConfiguredError("workers.app.configure(settings) was not called in this process")
    return _settings
