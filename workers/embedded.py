"""Running a Celery worker in this process (``serve`` on the embedded broker, and ``worker``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.settings import Settings

from .app import CPU_QUEUE, celery_app, configure, gpu_queue, json_logs

log = logging.getLogger(__name__)

__all__ = ["make_worker", "default_queues"]


def default_queues(settings: Settings) -> list[str]:
    return [gpu_queue(settings), CPU_QUEUE]


def make_worker(settings: Settings, queues: Sequence[str] | None = None, concurrency: int = 1,
                pool: str = "solo", hostname: str | None = None, loglevel: str = "INFO"):
    """A Celery ``WorkController``; ``start()`` blocks until stopped (must run in the main thread).

    ``pool="solo"`` runs tasks in this process, so the model is loaded once per process and
    reused for every job.
    """
    configure(settings)
    queues = list(queues or default_queues(settings))
    if json_logs():  # Celery's banner is text on stdout: one record instead
        log.info("celery worker %s: broker %s, queues %s, pool %s, concurrency %d", hostname or "(default name)",
                 settings.broker_url.split("@")[-1], ", ".join(queues), pool, concurrency)
    return celery_app.Worker(
        quiet=json_logs(),
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        hostname=hostname,
        loglevel=loglevel,
        without_heartbeat=settings.embedded_broker,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
