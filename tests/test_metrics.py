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
