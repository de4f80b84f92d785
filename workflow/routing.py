"""Routing: which studies go to the model, and where their results are sent.

Routes are :class:`~common.models.Route` rows, tried by ``order`` (then name). A route matches a
study when **every non-empty** criterion matches (case-insensitive):

``calling_ae_title``    the AE title that sent the study (``Study.calling_ae_title``)
``modality``            the Modality (0008,0060) of any series; ``CT\\MR`` or ``CT,MR`` lists several
``sop_class_uid``       the SOP Class UID (0008,0016) of any instance
``body_part_examined``  the Body Part Examined (0018,0015) of any series (glob allowed)
``series_description``  the Series Description (0008,103E) of any series: a glob (``*chest*``)
                        when it has ``*``, ``?`` or ``[``, else a substring

Disabled routes (``Route.enabled`` false) are skipped. The first matching route decides ``action`` (process | store | ignore) and ``urgent``. No match
means *process*. Destinations are the route's, else the calling AE's
(``CallingAE.destinations``), else every enabled destination; disabled or unknown destinations
are always left out (an administrator who disables a destination means "send nothing there").
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import CallingAE, Destination, Instance, Route, Series, Study

__all__ = ["RouteDecision", "decide", "route_matches"]

Action = Literal["process", "store", "ignore"]
_GLOB_CHARS = re.compile(r"[*?\[]")
_LIST_SPLIT = re.compile(r"[\\,]")


@dataclass(frozen=True)
class RouteDecision:
    action: Action
    urgent: bool
    destinations: list[str] = field(default_factory=list)
    route_name: str | None = None


@dataclass(frozen=True)
class _StudyFacts:
    calling_ae_title: str
    modalities: frozenset[str]
    sop_class_uids: frozenset[str]
    body_parts: frozenset[str]
    series_descriptions: tuple[str, ...]


def _norm(value: str | None) -> str:
    return (value or "").strip().casefold()


def _facts(session: Session, study: Study) -> _StudyFacts:
    series = session.execute(
        select(Series.modality, Series.body_part_examined, Series.series_description)
        .where(Series.study_id == study.id)
    ).all()
    sop_classes = session.scalars(
        select(Instance.sop_class_uid).where(Instance.study_id == study.id).distinct()
    ).all()
    return _StudyFacts(
        calling_ae_title=_norm(study.calling_ae_title),
        modalities=frozenset(_norm(s.modality) for s in series if s.modality),
        sop_class_uids=frozenset(uid.strip() for uid in sop_classes if uid),
        body_parts=frozenset(_norm(s.body_part_examined) for s in series if s.body_part_examined),
        series_descriptions=tuple(_norm(s.series_description) for s in series if s.series_description),
    )


def _glob_any(pattern: str, values: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(v, pattern) for v in values)


def route_matches(route: Route, facts: _StudyFacts) -> bool:
    """True when every non-empty criterion of ``route`` matches the study."""
    if route.calling_ae_title and _norm(route.calling_ae_title) != facts.calling_ae_title:
        return False
    if route.modality:
        wanted = {_norm(m) for m in _LIST_SPLIT.split(route.modality) if m.strip()}
        if not wanted & facts.modalities:
            return False
    if route.sop_class_uid and route.sop_class_uid.strip() not in facts.sop_class_uids:
        return False
    if route.body_part_examined:
        pattern = _norm(route.body_part_examined)
        if not _glob_any(pattern, facts.body_parts):
            return False
    if route.series_description:
        pattern = _norm(route.series_description)
        if _GLOB_CHARS.search(pattern):
            if not _glob_any(pattern, facts.series_descriptions):
                return False
        elif not any(pattern in d for d in facts.series_descriptions):
            return False
    return True


def _enabled(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Destination.name).where(Destination.enabled.is_(True)).order_by(Destination.name)
        ).all()
    )


def decide(session: Session, study: Study) -> RouteDecision:
    """The routing decision for ``study`` (read at the time the study is complete)."""
    facts = _facts(session, study)
    routes = session.scalars(
        select(Route).where(Route.enabled.is_(True)).order_by(Route.order, Route.name)).all()
    matched = next((r for r in routes if route_matches(r, facts)), None)
    enabled = _enabled(session)

    destinations: list[str]
    if matched is not None and matched.destinations:
        destinations = [d for d in matched.destinations if d in enabled]
    else:
        caller = None
        if study.calling_ae_title:
            caller = session.scalar(
                select(CallingAE).where(CallingAE.ae_title == study.calling_ae_title.strip())
            )
        if caller is not None and caller.destinations:
            destinations = [d for d in caller.destinations if d in enabled]
        else:
            destinations = enabled
    if matched is None:
        return RouteDecision(action="process", urgent=False, destinations=destinations, route_name=None)
    action: Action = "store" if matched.action == "store" else "ignore" if matched.action == "ignore" else "process"
    return RouteDecision(
        action=action, urgent=bool(matched.urgent), destinations=destinations, route_name=matched.name
    )
