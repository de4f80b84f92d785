"""``medrega-gateway evaluate`` end to end: progress, printed metrics, outputs, the run recorded
in the findings database and the audit log, auditors reading it through the API, --compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import session_factory
from common.models import AuditEvent, EvaluationRun
from tests.api.conftest import _env
from tests.evaluation.labelled_set import build

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, url: str, answers: Path) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[database]\nurl = "{url}"\n'
        f'[model]\nbackend = "replay"\npath = "{answers}"\n',
        encoding="utf-8",
    )
    return config


def _evaluate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "evaluate", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_evaluate_command_records_the_run_for_auditors(sqlite_url: str, tmp_path: Path) -> None:
    data = tmp_path / "set"
    built = build(data)
    config = _config(tmp_path, sqlite_url, data / "answers.jsonl")
    run = _evaluate(config, "--dataset", str(data), "--out", str(tmp_path / "out"), "--resamples", "200")
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "evaluating" in out + run.stderr  # the progress bar
    assert "detection / en / CT (4 cases)" in out and "box_f1" in out
    assert f"cases: {built['scored']} scored, {len(built['problems'])} not scored" in out
    assert "not scored: line" in out and "not_asked: MedRegA's detection (text2region) was trained in English" in out
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "index.html").is_file()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))

    with session_factory(sqlite_url)() as s:
        row = s.scalars(select(EvaluationRun)).one()
        assert row.weights_id == metrics["model"]["weights_id"] and row.backend == "replay"
        assert (row.scored_count, row.skipped_count) == (built["scored"], len(built["problems"]))
        assert row.plans_sha256 == metrics["plans"]["sha256"]
        summary = json.loads(row.summary)
        assert {g["task"] for g in summary["groups"]} >= {"detection", "report", "classification"}
        assert summary["skipped_by_kind"]["not_asked"] == 3
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "evaluation.run")).one()
        assert event.actor.startswith("cli:") and event.rows == built["scored"]
        assert metrics["model"]["weights_id"] in (event.query or "")

    from gateway.api.app import create_app

    env = _env(sqlite_url, tmp_path / "data")
    with TestClient(create_app(env.settings)) as client:
        listed = client.get("/api/v1/evaluations", headers=env.headers("auditor"))
        assert listed.status_code == 200, listed.text
        item = listed.json()["items"][0]
        assert item["weights_id"] == metrics["model"]["weights_id"] and item["scored_count"] == built["scored"]
        one = client.get(f"/api/v1/evaluations/{item['id']}", headers=env.headers("auditor"))
        assert one.status_code == 200 and one.json()["summary"]["groups"]
        assert client.get("/api/v1/evaluations/999", headers=env.headers("auditor")).status_code == 404
        assert client.get("/api/v1/evaluations").status_code == 401
    actions = [e.action for e in env.audit_events()]
    assert "evaluations.list" in actions and "evaluations.read" in actions

    # a second run compared with the first: detection moved, printed and recorded
    better = tmp_path / "set2"
    build(better, better_detection=True)
    config2 = _config(tmp_path, sqlite_url, better / "answers.jsonl")
    second = _evaluate(config2, "--dataset", str(better), "--out", str(tmp_path / "out2"), "--resamples", "200",
                       "--compare", str(tmp_path / "out" / "metrics.json"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "moved up: detection / en / CT box_f1 0.4000 -> 1.0000" in second.stdout
    with session_factory(sqlite_url)() as s:
        rows = s.scalars(select(EvaluationRun).order_by(EvaluationRun.id)).all()
        assert len(rows) == 2 and json.loads(rows[1].summary)["compared_with"]["moved"]


def test_evaluate_refuses_what_it_cannot_run(sqlite_url: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config(tmp_path, sqlite_url, tmp_path / "none.jsonl")
    run = _evaluate(config, "--dataset", str(empty), "--out", str(tmp_path / "out"))
    assert run.returncode != 0 and "has no cases.jsonl" in run.stderr
    data = tmp_path / "set"
    build(data)
    run = _evaluate(config, "--dataset", str(data), "--out", str(tmp_path / "out"))
    assert run.returncode != 0 and "cannot load the model" in run.stderr
