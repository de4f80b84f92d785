"""Prometheus metrics, read from the database at scrape time.

Delivery metrics carry the ``destination`` label (one unreachable PACS shows as its own series):
``medrega_delivery_attempts_total{destination,category}``, ``medrega_delivery_failures_total``,
``medrega_deliveries{destination,state}`` and ``medrega_delivery_seconds``.

The node, the dispatcher and any number of workers (on several hosts) all record into the
database, so a collector that reads the database gives one consistent picture without
multi-process counter files. Exposed by ``serve`` on ``node.metrics_port`` (``/metrics``), bound
to ``node.metrics_host`` (empty: ``node.host``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from common.db import session_factory
from common.dimse_status import category, is_stored
from common.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Instance,
    Job,
    JobEvent,
    ModelRun,
    QuarantinedInstance,
    utcnow,
)
from workflow.retention import spool_bytes

__all__ = ["GatewayCollector", "make_registry", "start_metrics_server", "STAGE_BUCKETS"]

STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
_STAGES = ("queued", "running", "inferred", "sr_written", "delivered")


class GatewayCollector(Collector):
    def __init__(self, database_url: str) -> None:
        self._sessions = session_factory(database_url)

    def collect(self) -> Iterator:
        with self._sessions() as s:
            n, size = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))).one()
            yield CounterMetricFamily("medrega_instances_received", "Instances stored in the spool", value=n)
            yield CounterMetricFamily("medrega_received_bytes", "Bytes of instances stored", value=size)
            dup = s.scalar(select(func.coalesce(func.sum(Instance.duplicate_count), 0)))
            yield CounterMetricFamily("medrega_instances_duplicate", "Identical instances received again", value=dup)
            held = GaugeMetricFamily(
                "medrega_spool_bytes", "Bytes of received instances held in the data folder, by area "
                "(spool: filed instances; replaced: bytes a changed re-send replaced); retention "
                "(storage.retention_days) lowers it", labels=["area"])
            for area, size in spool_bytes(s).items():
                held.add_metric([area], size)
            yield held
            rejected = CounterMetricFamily("medrega_instances_rejected", "Instances quarantined, by reason",
                                           labels=["reason"])
            # Grouped by the label: PostgreSQL sees two substr() with their own bound parameters
            # as different expressions ("must appear in the GROUP BY clause").
            reason_prefix = func.substr(QuarantinedInstance.reason, 1, 40).label("reason")
            for reason, count in s.execute(select(reason_prefix, func.count()).group_by(reason_prefix)):
                rejected.add_metric([reason], count)
            yield rejected
            depth = GaugeMetricFamily("medrega_jobs", "Jobs by state (pending+queued = queue depth)", labels=["state"])
            for state, count in s.execute(select(Job.state, func.count()).group_by(Job.state)):
                depth.add_metric([state.value], count)
            yield depth
            yield from self._deliveries(s)
            yield self._inference(s)
            yield self._stages(s)

    def _deliveries(self, s) -> Iterator:
        """Per destination: attempts by outcome (DIMSE status category, PS3.7 C.4), failures,
        deliveries by state, and the time from a document written to its destination's answer."""
        attempts = CounterMetricFamily(
            "medrega_delivery_attempts",
            "C-STORE attempts by destination and outcome: the DIMSE status category (Success, Warning, "
            "Failure, Cancel, Pending, Unknown) or NoStatus (no response: network or association error)",
            labels=["destination", "category"])
        failures = CounterMetricFamily("medrega_delivery_failures", "C-STORE attempts that did not succeed",
                                       labels=["destination"])
        by_category: dict[tuple[str, str], int] = {}
        failed: dict[str, int] = {}
        for name, status, count in s.execute(
            select(Delivery.destination_name, DeliveryAttempt.status, func.count())
            .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
            .group_by(Delivery.destination_name, DeliveryAttempt.status)
        ):
            key = (name, category(status) if status is not None else "NoStatus")
            by_category[key] = by_category.get(key, 0) + count
            failed[name] = failed.get(name, 0) + (0 if is_stored(status) else count)
        for labels, count in sorted(by_category.items()):
            attempts.add_metric(list(labels), count)
        for name, count in sorted(failed.items()):
            failures.add_metric([name], count)
        yield attempts
        yield failures
        states = GaugeMetricFamily("medrega_deliveries", "Deliveries by destination and state "
                                   "(pending, sent, failed, cancelled)", labels=["destination", "state"])
        for name, state, count in s.execute(select(Delivery.destination_name, Delivery.state, func.count())
                                            .group_by(Delivery.destination_name, Delivery.state)):
            states.add_metric([name, DeliveryState(state).value], count)
        yield states
        since = utcnow() - dt.timedelta(days=1)
        per_destination: dict[str, list[float]] = {}
        for name, created, delivered in s.execute(
            select(Delivery.destination_name, Delivery.created_at, Delivery.delivered_at)
            .where(Delivery.delivered_at >= since)
        ):
            per_destination.setdefault(name, []).append((delivered - created).total_seconds())
        seconds = HistogramMetricFamily("medrega_delivery_seconds", "Document written to stored by the "
                                        "destination, by destination (last day)", labels=["destination"])
        for name, values in sorted(per_destination.items()):
            buckets, total = _buckets(values)
            seconds.add_metric([name], buckets, total)
        yield seconds

    def _inference(self, s) -> HistogramMetricFamily:
        durations = s.scalars(select(ModelRun.duration_s).order_by(ModelRun.id.desc()).limit(10000)).all()
        return _histogram("medrega_inference_seconds", "Model time per prompt (last 10000)", durations)

    def _stages(self, s) -> HistogramMetricFamily:
        since = utcnow() - dt.timedelta(days=1)
        events = s.execute(select(JobEvent.job_id, JobEvent.state, JobEvent.at).where(JobEvent.at >= since)
                           .order_by(JobEvent.job_id, JobEvent.id)).all()
        per_stage: dict[str, list[float]] = {stage: [] for stage in _STAGES}
        previous: dict[int, dt.datetime] = {}
        for job_id, state, at in events:
            if job_id in previous and state in per_stage:
                per_stage[state].append((at - previous[job_id]).total_seconds())
            previous[job_id] = at
        family = HistogramMetricFamily("medrega_job_stage_seconds", "Time to reach each job state (last day)",
                                       labels=["stage"])
        for stage, values in per_stage.items():
            buckets, total = _buckets(values)
            family.add_metric([stage], buckets, total)
        return family


def _buckets(values: list[float]) -> tuple[list[tuple[str, float]], float]:
    buckets = [(str(b) if b != float("inf") else "+Inf", float(sum(1 for v in values if v <= b))) for b in STAGE_BUCKETS]
    return buckets, float(sum(values))


def _histogram(name: str, doc: str, values: list[float]) -> HistogramMetricFamily:
    buckets, total = _buckets(list(values))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def make_registry(database_url: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GatewayCollector(database_url))
    return registry


def start_metrics_server(database_url: str, port: int, host: str):
    """Serve ``/metrics`` on ``host``:``port`` in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=make_registry(database_url))
