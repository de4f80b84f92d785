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

from celery import Celery

from common.settings import Settings

__all__ = ["celery_app", "configure", "settings", "gpu_queue", "CPU_QUEUE", "NotConfiguredError"]

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


def settings() -> Settings:
    if _settings is None:
        raise NotConfiguredError("workers.app.configure(settings) was not called in this process")
    return _settings
