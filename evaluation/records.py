"""An evaluation in the findings database: its summary row and its audit event, in one
transaction, so an auditor sees which weights were validated, when, on how many cases."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from common import audit
from common.models import EvaluationRun

__all__ = ["record_evaluation", "summary_of"]


def summary_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """What the database keeps of metrics.json: each group's metrics with intervals and counts
    (no per-case answers, no IoU lists), what was not scored by kind, the comparison's moves."""
    skipped: dict[str, int] = {}
    for s in document.get("skipped", []):
        skipped[s["kind"]] = skipped.get(s["kind"], 0) + 1
    summary: dict[str, Any] = {
        "groups": [
            {k: g[k] for k in ("task", "language", "modality", "subset", "n", "metrics")}
            for g in document["groups"]
        ],
        "skipped_by_kind": skipped,
        "bootstrap": document.get("bootstrap"),
    }
    comparison = document.get("comparison")
    if comparison:
        summary["compared_with"] = {"against": comparison["against"], "moved": comparison["moved"]}
    return summary


def record_evaluation(session: Session, document: Mapping[str, Any], *, actor: str, out_dir: str) -> EvaluationRun:
    """Add the run's row and an ``evaluation.run`` audit event to ``session`` (the caller commits)."""
    model, plans, dataset = document["model"], document["plans"], document["dataset"]
    row = EvaluationRun(
        started_at=dt.datetime.fromisoformat(document["started_at"]),
        finished_at=dt.datetime.fromisoformat(document["finished_at"]),
        actor=actor[:64],
        dataset_path=str(dataset["path"])[:1024],
        cases_sha256=dataset["cases_sha256"],
        case_count=int(dataset["cases"]),
        scored_count=int(dataset["scored"]),
        skipped_count=int(dataset["skipped"]),
        backend=model["backend"],
        model_name=model["name"][:128],
        model_version=model["version"][:128],
        weights_id=model["weights_id"][:128],
        plans_sha256=plans["sha256"],
        prompts_sha256=plans["prompts_sha256"],
        prompt_layout=plans["layout"],
        out_dir=out_dir[:1024],
        summary=json.dumps(summary_of(document), ensure_ascii=False, allow_nan=False),
    )
    session.add(row)
    audit.record(
        session,
        actor=actor,
        role=None,  # the local command line: no API role
        action="evaluation.run",
        query=json.dumps({"dataset": str(dataset["path"]), "weights_id": model["weights_id"],
                          "plans_sha256": plans["sha256"], "scored": dataset["scored"],
                          "skipped": dataset["skipped"]}, ensure_ascii=False),
        rows=int(dataset["scored"]),
    )
    return row
