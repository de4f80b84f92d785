"""/metrics on PostgreSQL: the quarantine reasons group (a GROUP BY that SQLite let pass)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from common.db import session_scope, upgrade
from gateway.metrics import make_registry
from common.models import QuarantinedInstance


@pytest.mark.postgres
def test_rejections_by_reason_on_postgresql(postgres_url: str) -> None:
    upgrade(postgres_url)
    with session_scope(postgres_url) as s:
        for reason in ("a reason that is longer than forty characters, cut", "short", "short"):
            s.add(QuarantinedInstance(path="quarantine/x.dcm", reason=reason))
    lines = generate_latest(make_registry(postgres_url)).decode().splitlines()
    rejected = sorted(line for line in lines if line.startswith("medrega_instances_rejected_total"))
    assert rejected == [
        'medrega_instances_rejected_total{reason="a reason that is longer than forty chara"} 1.0',
        'medrega_instances_rejected_total{reason="short"} 2.0',
    ]


def _delivery_metrics(url: str) -> list[str]:
    import datetime as dt

    from common.db import session_factory
    from common.models import DeliveryAttempt, DeliveryState, utcnow
    from tests.workflow.test_state_machines import _delivery

    with session_factory(url)() as session:
        to_pacs = _delivery(session, DeliveryState.PENDING)
        sent = _delivery(session, DeliveryState.SENT)
        sent.delivered_at = sent.created_at + dt.timedelta(seconds=3)
        to_archive = _delivery(session, DeliveryState.FAILED)
        to_archive.destination_name = "archive"
        for delivery, status in ((to_pacs, None), (to_pacs, None), (to_pacs, 0xA700), (sent, 0xB000),
                                 (to_archive, 0xC000)):
            session.add(DeliveryAttempt(delivery_id=delivery.id, at=utcnow(), status=status))
        session.commit()
    text = generate_latest(make_registry(url)).decode()
    return sorted(line for line in text.splitlines()
                  if line.startswith(("medrega_delivery_", "medrega_deliveries{")) and "_created" not in line)


EXPECTED_DELIVERY_METRICS = [
    'medrega_deliveries{destination="archive",state="failed"} 1.0',
    'medrega_deliveries{destination="pacs",state="pending"} 1.0',
    'medrega_deliveries{destination="pacs",state="sent"} 1.0',
    'medrega_delivery_attempts_total{category="Failure",destination="archive"} 1.0',
    'medrega_delivery_attempts_total{category="Failure",destination="pacs"} 1.0',
    'medrega_delivery_attempts_total{category="NoStatus",destination="pacs"} 2.0',
    'medrega_delivery_attempts_total{category="Warning",destination="pacs"} 1.0',
    'medrega_delivery_failures_total{destination="archive"} 1.0',
    'medrega_delivery_failures_total{destination="pacs"} 3.0',
]


def _without_histogram(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("medrega_delivery_seconds")]


def test_delivery_metrics_per_destination(sqlite_url: str) -> None:
    """Issue 17: one failing destination shows as its own series, outcomes by DIMSE status category."""
    lines = _delivery_metrics(sqlite_url)
    assert _without_histogram(lines) == EXPECTED_DELIVERY_METRICS
    assert 'medrega_delivery_seconds_bucket{destination="pacs",le="2"} 0.0' in lines
    assert 'medrega_delivery_seconds_bucket{destination="pacs",le="5"} 1.0' in lines
    assert 'medrega_delivery_seconds_sum{destination="pacs"} 3.0' in lines
    assert not any('destination="archive"' in line for line in lines if line.startswith("medrega_delivery_seconds"))


@pytest.mark.postgres
def test_delivery_metrics_per_destination_on_postgresql(postgres_url: str) -> None:
    upgrade(postgres_url)
    assert _without_histogram(_delivery_metrics(postgres_url)) == EXPECTED_DELIVERY_METRICS
