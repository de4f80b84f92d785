"""Routing decisions from Route / CallingAE / Destination rows."""

from __future__ import annotations

import pydicom
import pytest
from sqlalchemy.orm import Session

from workflow.routing import decide
from gateway import admin
from common.db import session_scope
from common.models import Instance, Series, Study

CT = "1.2.840.10008.5.1.4.1.1.2"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _study(s: Session, *, caller: str | None = "CT1", series=(("CT", "CHEST", "Thorax 1.0 B70f", CT),)) -> Study:
    study = Study(study_instance_uid=pydicom.uid.generate_uid(), calling_ae_title=caller)
    s.add(study)
    s.flush()
    for n, (modality, body, desc, sop_class) in enumerate(series):
        se = Series(study_id=study.id, series_instance_uid=f"{study.study_instance_uid}.{n}",
                    modality=modality, body_part_examined=body, series_description=desc)
        s.add(se)
        s.flush()
        s.add(Instance(study_id=study.id, series_id=se.id, sop_instance_uid=f"{se.series_instance_uid}.1",
                       sop_class_uid=sop_class, transfer_syntax_uid="1.2.840.10008.1.2.1", path="x",
                       size_bytes=1, sha256="0" * 64))
    s.flush()
    return study


@pytest.fixture
def session(sqlite_url):
    with session_scope(sqlite_url) as s:
        admin.add_destination(s, "pacs", "PACS", "10.0.0.1", 104)
        admin.add_destination(s, "research", "RESEARCH", "10.0.0.2", 104)
        admin.add_destination(s, "old", "OLD", "10.0.0.3", 104)
        admin.get_destination(s, "old").enabled = False
        yield s


def test_no_route_means_process_to_every_enabled_destination(session):
    d = decide(session, _study(session))
    assert (d.action, d.urgent, d.destinations, d.route_name) == ("process", False, ["pacs", "research"], None)


def test_first_matching_route_by_order_wins(session):
    admin.add_route(session, "later", order=20, modality="CT", action="store")
    admin.add_route(session, "first", order=10, modality="ct", body_part_examined="chest", action="process",
                    urgent=True, destinations=["research"])
    d = decide(session, _study(session))
    assert (d.action, d.urgent, d.destinations, d.route_name) == ("process", True, ["research"], "first")


def test_a_disabled_route_is_skipped(session):
    admin.add_route(session, "first", order=10, modality="CT", action="ignore")
    admin.add_route(session, "second", order=20, modality="CT", action="store")
    admin.set_route_enabled(session, "first", False)
    assert decide(session, _study(session)).route_name == "second"
    admin.set_route_enabled(session, "first", True)
    assert decide(session, _study(session)).route_name == "first"


def test_every_non_empty_field_must_match(session):
    admin.add_route(session, "mr-only", order=1, modality="CT", calling_ae_title="MR1", action="ignore")
    assert decide(session, _study(session)).route_name is None


@pytest.mark.parametrize("pattern,matches", [
    ("thorax", True), ("THORAX 1.0", True), ("*b70f", True), ("thor?x*", True), ("abdomen", False),
    ("*abd*", False),
])
def test_series_description_glob_or_substring(session, pattern, matches):
    admin.add_route(session, "r", series_description=pattern, action="ignore")
    assert (decide(session, _study(session)).action == "ignore") is matches


def test_any_series_or_instance_may_match(session):
    admin.add_route(session, "dx", sop_class_uid=DX, action="store")
    admin.add_route(session, "multi", order=200, modality="US\\MG", action="ignore")
    study = _study(session, series=(("CT", "CHEST", "a", CT), ("DX", "CHEST", "b", DX)))
    assert decide(session, study).route_name == "dx"
    study2 = _study(session, series=(("MG", "BREAST", "c", CT),))
    assert decide(session, study2).route_name == "multi"


def test_destinations_from_the_calling_ae_when_the_route_has_none(session):
    admin.add_calling_ae(session, "CT1", destinations=["research", "old"])
    admin.add_route(session, "ct", modality="CT", urgent=True)
    d = decide(session, _study(session))
    assert d.destinations == ["research"]  # "old" is disabled
    assert d.urgent is True


def test_calling_ae_match_is_case_insensitive(session):
    admin.add_route(session, "from-ct1", calling_ae_title="ct1", action="store")
    assert decide(session, _study(session, caller="CT1")).action == "store"
    assert decide(session, _study(session, caller=None)).action == "process"
