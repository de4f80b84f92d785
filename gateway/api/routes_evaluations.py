"""Auditors' view of the model's validations (``medrega-gateway evaluate`` runs): which weights
and plans were measured, when, on how many cases, with which metrics. Every read is audited in
its own transaction, like the other auditor endpoints."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import EvaluationRun

from .auditing import audit_request, query_text
from .auth import Principal, get_session, require_reader
from .schemas import AUTH_RESPONSES, ErrorOut, RowId
from .query_check import reject_unknown_query_parameters

__all__ = ["router", "EvaluationRunOut", "EvaluationRunList"]

router = APIRouter(prefix="/api/v1", tags=["auditor"], responses=AUTH_RESPONSES,
                   dependencies=[Depends(reject_unknown_query_parameters)])

WeightsId = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9:_.-]*$")]


class EvaluationRunOut(BaseModel):
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime
    actor: str
    dataset_path: str
    cases_sha256: str
    case_count: int
    scored_count: int
    skipped_count: int
    backend: str
    model_name: str
    model_version: str
    weights_id: str
    plans_sha256: str
    prompts_sha256: str
    prompt_layout: str
    #: The groups' metrics (value, 95 % interval, cases), what was not scored by kind.
    summary: dict[str, Any]


class EvaluationRunList(BaseModel):
    items: list[EvaluationRunOut]


def _out(row: EvaluationRun) -> EvaluationRunOut:
    return EvaluationRunOut(
        id=row.id, started_at=row.started_at, finished_at=row.finished_at, actor=row.actor,
        dataset_path=row.dataset_path, cases_sha256=row.cases_sha256, case_count=row.case_count,
        scored_count=row.scored_count, skipped_count=row.skipped_count, backend=row.backend,
        model_name=row.model_name, model_version=row.model_version, weights_id=row.weights_id,
        plans_sha256=row.plans_sha256, prompts_sha256=row.prompts_sha256, prompt_layout=row.prompt_layout,
        summary=json.loads(row.summary),
    )


@router.get("/evaluations", response_model=EvaluationRunList)
def evaluations(
    request: Request,
    weights_id: WeightsId | None = None,
    limit: Annotated[int, Query(ge=1, le=200, description="newest first")] = 50,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> EvaluationRunList:
    """The model's validation runs, newest first (optionally for one weights digest)."""
    query = select(EvaluationRun).order_by(EvaluationRun.finished_at.desc(), EvaluationRun.id.desc()).limit(limit)
    if weights_id:
        query = query.where(EvaluationRun.weights_id == weights_id)
    items = [_out(row) for row in session.scalars(query)]
    audit_request(session, principal, "evaluations.list",
                  query_text(request.url.path, {"weights_id": weights_id} if weights_id else None, limit=limit),
                  rows=len(items))
    session.commit()
    return EvaluationRunList(items=items)


@router.get("/evaluations/{run_id}", response_model=EvaluationRunOut, responses={404: {"model": ErrorOut}})
def evaluation(
    request: Request,
    run_id: RowId,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> EvaluationRunOut:
    """One validation run with its metrics."""
    row = session.get(EvaluationRun, run_id)
    audit_request(session, principal, "evaluations.read", query_text(request.url.path),
                  rows=0 if row is None else 1, outcome="success" if row is not None else "failure")
    session.commit()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no evaluation run {run_id}")
    return _out(row)
