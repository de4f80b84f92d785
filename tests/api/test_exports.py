"""Streamed CSV/JSON exports: complete, batched from a server-side cursor, audited with row counts
(also when the client stops reading), spreadsheet-safe."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from gateway.api.auth import Principal
from gateway.api.export import _chunks, csv_cell
from gateway.api.query_findings import EXPORT_COLUMNS, FindingFilters, iter_findings
from common.db import make_engine

from .conftest import Env
from .factories import make_study

MANY_REGIONS = [(f"region {i}", f"区域 {i}", f"C{i}", (10 * i, 10, 10 * i + 9, 50)) for i in range(60)]


@pytest.fixture
def many(env: Env) -> int:
    """2 studies x 2 languages x 60 regions = 240 findings, plus one study of 6."""
    with env.session() as s:
        for _ in range(2):
            make_study(s, env.data_dir, regions=MANY_REGIONS, write_image=False)
        make_study(s, env.data_dir, regions=[("=HYPERLINK(\"x\")", "-1+1", "X1", (1, 1, 5, 5))],
                   write_image=False, modality="CT")
        s.commit()
    return 242


def test_csv_export_streams_every_row_and_is_audited(client: TestClient, env: Env, many: int) -> None:
    with client.stream("GET", "/api/v1/findings/export", params={"format": "csv"},
                       headers=env.headers()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        body = b"".join(r.iter_bytes()).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == EXPORT_COLUMNS
    assert len(rows) == many and len({r["id"] for r in rows}) == many
    assert {"区域 7", "region 7"} <= {r["label"] for r in rows}
    injected = {r["label"] for r in rows if r["modality"] == "CT"}
    assert injected == {"'=HYPERLINK(\"x\")", "'-1+1"}  # not run as formulas by a spreadsheet
    assert all(r["identifiers_hidden"] == "true" and r["patient_id"] == "" for r in rows)
    ev = env.audit_events()[-1]
    assert (ev.action, ev.rows, ev.outcome, ev.actor) == ("findings.export", many, "success",
                                                          "bob-auditor")
    assert json.loads(ev.query or "{}")["format"] == "csv"


def test_json_export_with_filters(client: TestClient, env: Env, many: int) -> None:
    r = client.get("/api/v1/findings/export", params={"format": "json", "language": "zh"},
                   headers=env.headers("admin"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    items = r.json()
    assert len(items) == many // 2 and {i["language"] for i in items} == {"zh"}
    assert items[0]["patient_id"]  # admins see identifiers
    ev = env.audit_events()[-1]
    assert ev.rows == many // 2 and json.loads(ev.query or "{}")["filters"] == {"language": "zh"}

    empty = client.get("/api/v1/findings/export", params={"format": "json", "modality": "US"},
                       headers=env.headers())
    assert empty.json() == [] and env.audit_events()[-1].rows == 0


def test_export_cut_short_is_audited_as_incomplete(env: Env, many: int) -> None:
    factory = sessionmaker(make_engine(env.url), expire_on_commit=False)
    who = Principal(name="bob-auditor", role="auditor", sees_patient_identifiers=False)
    chunks = _chunks(factory, lambda s: iter_findings(s, FindingFilters(), show_identifiers=False,
                                                      batch_size=50),
                     "csv", EXPORT_COLUMNS, who, "findings.export", "{}")
    assert next(chunks).startswith(b"id,created_at")
    first = next(chunks)
    assert first.count(b"\r\n") == 50
    chunks.close()  # the client went away
    ev = env.audit_events()[-1]
    assert (ev.action, ev.rows, ev.outcome) == ("findings.export", 50, "incomplete")


def test_csv_cell() -> None:
    assert csv_cell(None) == "" and csv_cell(True) == "true" and csv_cell(3) == "3"
    assert csv_cell([1, 2]) == "[1, 2]" and csv_cell("@SUM(A1)") == "'@SUM(A1)"
    assert csv_cell("left lung") == "left lung"
