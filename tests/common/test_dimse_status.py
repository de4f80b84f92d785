"""One reading of DIMSE statuses (pynetdicom.status) for the sender and the metrics alike."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from common.dimse_status import category, is_stored


@pytest.mark.parametrize(("status", "stored"), [
    (0x0000, True), (0x0001, True), (0x0107, True), (0x0116, True), (0xB000, True), (0xB007, True),
    (0xB123, True), (0xA700, False), (0xA900, False), (0xC000, False), (0x0122, False), (0xFE00, False),
    (0xFF00, False), (0x1234, False), (None, False),
])
def test_success_and_every_warning_mean_stored(status: int | None, stored: bool) -> None:
    assert is_stored(status) is stored


def test_0x0001_is_a_warning() -> None:
    assert category(0x0001) == "Warning"


def test_metrics_count_as_failures_what_the_sender_counts_as_not_sent(sqlite_url: str) -> None:
    from common.db import session_factory
    from common.models import DeliveryAttempt, DeliveryState, utcnow
    from gateway.metrics import make_registry
    from tests.workflow.test_state_machines import _delivery as make_delivery

    with session_factory(sqlite_url)() as session:
        delivery = make_delivery(session, DeliveryState.PENDING)
        for status in (0x0000, 0x0001, 0xB000, 0xA700, None):
            session.add(DeliveryAttempt(delivery_id=delivery.id, at=utcnow(), status=status))
        session.commit()
    text = generate_latest(make_registry(sqlite_url)).decode()
    assert 'medrega_delivery_failures_total{destination="pacs"} 2.0' in text
