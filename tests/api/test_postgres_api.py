"""The same reads on PostgreSQL: keyset pages, ILIKE label search, server-side-cursor exports."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from common.models import DeliveryState

from .conftest import Env
from .factories import make_study

pytestmark = pytest.mark.postgres


def test_search_pages_export_and_audit_on_postgres(pg_env: Env) -> None:
    env = pg_env
    with env.session() as s:
        for i in range(5):
            make_study(s, env.data_dir, write_image=False, modality="CT" if i % 2 else "CR",
                       delivery_state=DeliveryState.FAILED if i == 3 else DeliveryState.SENT)
        s.commit()
    with TestClient(create_app(env.settings)) as client:
        ids, cursor = [], None
        while True:
            page = client.get("/api/v1/findings", params={"limit": 7, **({"cursor": cursor} if cursor else {})},
                              headers=env.headers()).json()
            ids += [f["id"] for f in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(ids) == len(set(ids)) == 30
        lungs = client.get("/api/v1/findings", params={"label": "LUNG", "modality": "ct", "limit": 100},
                           headers=env.headers()).json()["items"]
        assert len(lungs) == 4 * 1 and {f["modality"] for f in lungs} == {"CT"}
        failed = client.get("/api/v1/findings", params={"delivery_status": "failed", "limit": 100},
                            headers=env.headers()).json()["items"]
        assert len(failed) == 6
        body = client.get("/api/v1/findings/export", params={"format": "csv"},
                          headers=env.headers()).text
        assert len(list(csv.DictReader(io.StringIO(body)))) == 30
        uid = failed[0]["study_instance_uid"]
        t = client.get(f"/api/v1/studies/{uid}/timeline", headers=env.headers()).json()
        assert "delivery_failed" in [s["step"] for s in t["steps"]]
    actions = [(e.action, e.rows) for e in env.audit_events()]
    assert ("findings.export", 30) in actions and ("study.timeline", len(t["steps"])) in actions
