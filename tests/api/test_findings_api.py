"""Auditors' API: findings search filters, keyset pages, studies, timeline, deliveries, audit log.

Every read must leave exactly one audit event with who, what query and how many rows.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from common.models import DeliveryState, JobState

from .conftest import Env, make_settings
from .factories import BASE_TIME, StudyRows, make_study, write_tiny_dicom


@pytest.fixture
def studies(env: Env) -> dict[str, StudyRows]:
    with env.session() as s:
        out = {
            "cr": make_study(s, env.data_dir, received_at=BASE_TIME, modality="CR",
                             calling_ae_title="CR_ROOM_1"),
            "ct": make_study(s, env.data_dir, received_at=BASE_TIME + dt.timedelta(days=1),
                             modality="CT", calling_ae_title="CT_SCANNER",
                             delivery_state=DeliveryState.FAILED, weights_id="sha256:aaaa"),
            "mr": make_study(s, env.data_dir, received_at=BASE_TIME + dt.timedelta(days=2),
                             modality="MR", calling_ae_title="MR_1", model_name="MedRegA-lite",
                             delivery_state=DeliveryState.PENDING),
            "dead": make_study(s, env.data_dir, received_at=BASE_TIME + dt.timedelta(days=3),
                               job_state=JobState.DEAD),
        }
        s.commit()
        return out


def _search(client: TestClient, env: Env, role: str = "auditor", **params) -> dict:
    r = client.get("/api/v1/findings", params=params, headers=env.headers(role))
    assert r.status_code == 200, r.text
    return r.json()


def test_search_filters(client: TestClient, env: Env, studies: dict[str, StudyRows]) -> None:
    uid = {k: v.study.study_instance_uid for k, v in studies.items()}

    def found(**params) -> set[str]:
        return {f["study_instance_uid"] for f in _search(client, env, limit=500, **params)["items"]}

    assert found() == {uid["cr"], uid["ct"], uid["mr"]}
    assert len(_search(client, env, limit=500)["items"]) == 18
    assert found(modality="ct") == {uid["ct"]}
    assert found(calling_ae_title="MR_1") == {uid["mr"]}
    assert found(model_name="MedRegA-lite") == {uid["mr"]}
    assert found(weights_id="sha256:aaaa") == {uid["ct"]}
    assert found(delivery_status="failed") == {uid["ct"]}
    assert found(delivery_status="pending") == {uid["mr"]}
    assert found(delivery_status="sent") == {uid["cr"]}
    assert found(delivery_status="none") == set()
    assert found(study_instance_uid=uid["cr"]) == {uid["cr"]}
    day2 = (BASE_TIME + dt.timedelta(days=1)).isoformat()
    day3 = (BASE_TIME + dt.timedelta(days=2)).isoformat()
    assert found(created_from=day2, created_to=day3) == {uid["ct"]}

    lungs = _search(client, env, label="LUNG", limit=500)["items"]
    assert {f["label"] for f in lungs} == {"left lung", "right lung"}
    zh = _search(client, env, label="肺", language="zh", limit=500)["items"]
    assert {f["label"] for f in zh} == {"左肺", "右肺"} and len(zh) == 6
    assert _search(client, env, label="100%")["items"] == []  # LIKE wildcards are literal

    one = _search(client, env, study_instance_uid=uid["ct"], language="en", label="heart")["items"]
    assert len(one) == 1
    f = one[0]
    assert f["modality"] == "CT" and f["calling_ae_title"] == "CT_SCANNER"
    assert f["delivery_status"] == "failed" and f["weights_id"] == "sha256:aaaa"
    assert f["box"] == [380, 400, 700, 850] and len(f["box_px"]) == 4
    assert f["sop_instance_uid"] == studies["ct"].instance.sop_instance_uid
    assert f["code_value"] == "80891009" and f["model_name"] == "MedRegA"


def test_keyset_pages_cover_everything_once(client: TestClient, env: Env,
                                            studies: dict[str, StudyRows]) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = _search(client, env, **params)
        seen += [f["id"] for f in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 18 and len(set(seen)) == 18
    times = [dt.datetime.fromisoformat(f["created_at"])
             for f in _search(client, env, limit=500)["items"]]
    assert times == sorted(times, reverse=True)

    bad = client.get("/api/v1/findings", params={"cursor": "bm90LWEtY3Vyc29y"},
                     headers=env.headers())
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


def test_every_read_is_audited_with_query_and_row_count(client: TestClient, env: Env,
                                                        studies: dict[str, StudyRows]) -> None:
    uid = studies["cr"].study.study_instance_uid
    before = len(env.audit_events())
    _search(client, env, modality="CR", language="en", limit=2)
    assert client.get(f"/api/v1/studies/{uid}", headers=env.headers()).status_code == 200
    assert client.get(f"/api/v1/studies/{uid}/timeline", headers=env.headers()).status_code == 200
    assert client.get("/api/v1/studies", headers=env.headers()).status_code == 200
    assert client.get("/api/v1/deliveries", headers=env.headers()).status_code == 200
    assert client.get("/api/v1/audit-events", headers=env.headers()).status_code == 200
    missing = client.get("/api/v1/studies/1.2.3.4", headers=env.headers())
    assert missing.status_code == 404

    events = env.audit_events()[before:]
    assert [e.action for e in events] == [
        "findings.search", "study.read", "study.timeline", "studies.search",
        "deliveries.search", "audit.search", "study.read",
    ]
    assert all(e.actor == "bob-auditor" and e.role == "auditor" for e in events)
    search = events[0]
    assert search.rows == 2 and search.outcome == "success"
    query = json.loads(search.query or "{}")
    assert query["path"] == "/api/v1/findings"
    assert query["filters"] == {"language": "en", "modality": "CR"} and query["limit"] == 2
    assert events[1].study_instance_uid == uid and events[1].rows == 6
    assert (events[2].rows or 0) >= 8
    assert events[3].rows == 4
    assert events[-1].outcome == "failure" and events[-1].rows == 0
    assert events[-1].study_instance_uid == "1.2.3.4"


def test_patient_identifiers_only_for_roles_allowed(client: TestClient, env: Env,
                                                    studies: dict[str, StudyRows]) -> None:
    uid = studies["cr"].study.study_instance_uid
    pid, name, accession = (studies["cr"].study.patient_id, studies["cr"].study.patient_name,
                            studies["cr"].study.accession_number)
    assert pid is not None and name is not None and accession is not None
    auditor = client.get(f"/api/v1/studies/{uid}", headers=env.headers()).json()
    assert auditor["study"]["identifiers_hidden"] is True
    assert pid not in json.dumps(auditor)
    assert name not in json.dumps(auditor)
    assert all(f["patient_id"] is None for f in _search(client, env)["items"])
    export = client.get("/api/v1/findings/export", params={"format": "csv"}, headers=env.headers())
    assert pid not in export.text and accession not in export.text

    admin = client.get(f"/api/v1/studies/{uid}", headers=env.headers("admin")).json()
    assert admin["study"]["patient_id"] == pid and admin["study"]["identifiers_hidden"] is False
    assert admin["study"]["accession_number"] == studies["cr"].study.accession_number

    allowed = create_app(make_settings(env.url, env.data_dir, auditors_see_patient_identifiers=True))
    with TestClient(allowed) as c2:
        shown = c2.get(f"/api/v1/studies/{uid}", headers=env.headers()).json()
    assert shown["study"]["patient_id"] == pid


def test_timeline_has_every_stage_with_durations(client: TestClient, env: Env,
                                                 studies: dict[str, StudyRows]) -> None:
    uid = studies["cr"].study.study_instance_uid
    t = client.get(f"/api/v1/studies/{uid}/timeline", headers=env.headers()).json()
    steps = [s["step"] for s in t["steps"]]
    for wanted in ("received", "complete", "queued", "inferred", "sr_written", "document_written",
                   "delivered_to", "delivered"):
        assert wanted in steps, steps
    assert steps.index("received") < steps.index("complete") < steps.index("queued") \
        < steps.index("inferred") < steps.index("sr_written") < steps.index("delivered")
    by_step = {s["step"]: s for s in t["steps"]}
    assert by_step["received"]["since_previous_s"] is None
    assert by_step["complete"]["since_received_s"] == 32.0
    assert by_step["inferred"]["since_received_s"] == 47.0
    assert by_step["queued"]["since_previous_s"] == 1.0  # complete at 32 s, queued at 33 s
    assert t["total_s"] == 49.5
    assert by_step["delivered_to"]["detail"].endswith("to PACS")

    failed = client.get(f"/api/v1/studies/{studies['ct'].study.study_instance_uid}/timeline",
                        headers=env.headers()).json()
    assert "delivery_failed" in [s["step"] for s in failed["steps"]]
    assert failed["total_s"] is None


def test_study_detail_and_deliveries(client: TestClient, env: Env,
                                     studies: dict[str, StudyRows]) -> None:
    ct = studies["ct"]
    d = client.get(f"/api/v1/studies/{ct.study.study_instance_uid}", headers=env.headers()).json()
    assert d["study"]["modalities"] == ["CT"] and d["study"]["instance_count"] == 1
    assert d["series"][0]["instance_sop_uids"] == [ct.instance.sop_instance_uid]
    assert len(d["findings"]) == 6 and len(d["deliveries"]) == 2
    assert all(x["state"] == "failed" and len(x["attempts_log"]) == 5 for x in d["deliveries"])

    failed = client.get("/api/v1/deliveries", params={"state": "failed"},
                        headers=env.headers()).json()
    assert {x["study_instance_uid"] for x in failed["items"]} == {ct.study.study_instance_uid}
    pages, cursor, ids = 0, None, []
    while True:
        page = client.get("/api/v1/deliveries", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=env.headers()).json()
        ids += [x["id"] for x in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(ids) == len(set(ids)) == 6 and pages == 3


def test_studies_list_filters(client: TestClient, env: Env, studies: dict[str, StudyRows]) -> None:
    def uids(**params) -> list[str]:
        r = client.get("/api/v1/studies", params=params, headers=env.headers())
        assert r.status_code == 200, r.text
        return [x["study_instance_uid"] for x in r.json()["items"]]

    assert uids() == [studies[k].study.study_instance_uid for k in ("dead", "mr", "ct", "cr")]
    assert uids(modality="MR") == [studies["mr"].study.study_instance_uid]
    assert uids(calling_ae_title="CT_SCANNER") == [studies["ct"].study.study_instance_uid]
    first = client.get("/api/v1/studies", params={"limit": 3}, headers=env.headers()).json()
    rest = client.get("/api/v1/studies", params={"cursor": first["next_cursor"]},
                      headers=env.headers()).json()
    assert [x["study_instance_uid"] for x in rest["items"]] == [studies["cr"].study.study_instance_uid]


def test_audit_log_is_readable_and_exportable_but_not_writable(
        client: TestClient, env: Env, studies: dict[str, StudyRows]) -> None:
    _search(client, env, modality="CR")
    page = client.get("/api/v1/audit-events", params={"action": "findings.search"},
                      headers=env.headers()).json()
    assert page["items"][0]["actor"] == "bob-auditor"
    csv_text = client.get("/api/v1/audit-events/export", params={"format": "csv"},
                          headers=env.headers()).text
    header, *lines = csv_text.strip().splitlines()
    assert header.startswith("id,at,actor,role,action")
    assert any("findings.search" in line for line in lines)
    exported = client.get("/api/v1/audit-events/export", params={"format": "json"},
                          headers=env.headers("admin")).json()
    assert {"findings.search", "audit.search"} <= {e["action"] for e in exported}
    # No route changes the audit log, for any role.
    for method in ("post", "put", "patch", "delete"):
        for role in ("admin", "auditor"):
            r = client.request(method, "/api/v1/audit-events", headers=env.headers(role))
            assert r.status_code == 405
    app = client.app
    assert isinstance(app, FastAPI)
    assert not [p for p in app.openapi()["paths"] if "audit" in p and set(app.openapi()["paths"][p]) - {"get"}]


def test_study_detail_and_page_show_image_selection_and_prompts(client: TestClient, env: Env,
                                                                 studies: dict[str, StudyRows]) -> None:
    """Issue 14: every image chosen or left out with its reason, and the trained prompts each got."""
    from gateway.api.ui import COOKIE_NAME

    cr = studies["cr"]
    uid = cr.study.study_instance_uid
    d = client.get(f"/api/v1/studies/{uid}", headers=env.headers()).json()
    chosen = [s for s in d["image_selection"] if s["chosen"]]
    left_out = [s for s in d["image_selection"] if not s["chosen"]]
    assert [(s["sop_instance_uid"], s["plan"], s["view"]) for s in chosen] == [
        (cr.instance.sop_instance_uid, "chest-xray-frontal", "frontal")]
    assert left_out[0]["sop_instance_uid"] is None and left_out[0]["reason"].startswith("localizer")
    runs = {r["language"]: r for r in d["model_runs"]}
    assert runs["en"]["training_set"] == "grounded_reports_mimiccxr" and not runs["en"]["truncated"]
    assert runs["en"]["removed_sentences"] == [{"sentence": "Compared to prior, unchanged.", "reason": "prior_study"}]
    assert runs["zh"]["truncated"] and runs["zh"]["removed_sentences"] == []

    page = TestClient(client.app)
    page.cookies.set(COOKIE_NAME, env.auditor_token)
    html = page.get(f"/ui/studies/{uid}").text
    assert 'id="selection"' in html and "localizer (Image Type ORIGINAL" in html
    assert "grounded_reports_mimiccxr" in html and "truncated" in html and "prior study left out" in html


REPORT_ZH = "影像诊断：所示层面双肺纹理清晰，未见明确实变及结节影。影像结论：胸部CT所示层面未见明显异常。"


def _slice_results(env: Env, answers: list[str]) -> tuple[str, list[str], int]:
    """A CT study whose model read ``answers[k]`` (report) and Cardiomegaly (CheXpert) from slice k
    of one series; returns the study, the slices' SOP Instance UIDs and the job."""
    from pydicom.uid import generate_uid

    from common.models import Finding, Instance, ModelRun, Series

    with env.session() as s:
        rows = make_study(s, env.data_dir, modality="CT", regions=[])
        first = rows.instance
        series_uid = s.get_one(Series, first.series_id).series_instance_uid
        slices = [first]
        for k in range(1, len(answers)):
            sop_uid = generate_uid()
            path = f"spool/{rows.study.study_instance_uid}/{sop_uid}.dcm"
            write_tiny_dicom(env.data_dir / path, study_uid=rows.study.study_instance_uid, series_uid=series_uid,
                             sop_uid=sop_uid, modality="CT")
            slices.append(Instance(
                study_id=first.study_id, series_id=first.series_id, sop_instance_uid=sop_uid,
                sop_class_uid=first.sop_class_uid, transfer_syntax_uid=first.transfer_syntax_uid,
                instance_number=k + 1, rows=first.rows, columns=first.columns, number_of_frames=1,
                path=path, size_bytes=first.size_bytes, sha256="0" * 64, received_at=first.received_at))
            s.add(slices[-1])
        s.flush()
        for instance, answer in zip(slices, answers):
            for task, training_set, finding in (
                ("report", "ct_report_zh", {"kind": "report", "text": answer}),
                ("classification", "chexpert_train_cls",
                 {"kind": "classification", "label": "Cardiomegaly", "code_value": "287272002",
                  "code_scheme": "SCT", "code_meaning": "心脏增大"}),
            ):
                run = ModelRun(job_id=rows.job.id, instance_id=instance.id, language="zh", task=task,
                               backend="replay", model_name="MedRegA", model_version="1.0", weights_id="sha256:1",
                               prompt="...", raw_answer=answer, duration_s=1.0, training_set=training_set)
                s.add(run)
                s.flush()
                s.add(Finding(job_id=rows.job.id, model_run_id=run.id, language="zh",
                              referenced_sop_instance_uid=instance.sop_instance_uid,
                              referenced_sop_class_uid=instance.sop_class_uid, **finding))
        s.commit()
        return rows.study.study_instance_uid, [i.sop_instance_uid for i in slices], rows.job.id


@pytest.mark.parametrize("differing", [False, True])
def test_a_result_read_the_same_from_several_slices_is_listed_once(client: TestClient, env: Env,
                                                                   differing: bool) -> None:
    """A report on 3 slices of a CT series, the same each time: one result with the 3 slices, on the
    API and the study page (as in the SR); a slice that read otherwise is a result of its own."""
    from gateway.api.ui import COOKIE_NAME

    other = "影像诊断：右肺下叶见一结节影。影像结论：右肺下叶结节。"
    uid, slices, job_id = _slice_results(env, [REPORT_ZH, other if differing else f"{REPORT_ZH}\n", REPORT_ZH])
    d = client.get(f"/api/v1/studies/{uid}", headers=env.headers()).json()
    results = [(r["kind"], r["text"] or r["code_meaning"], [i["sop_instance_uid"] for i in r["images"]])
               for r in d["image_results"]]
    reports = [(text, images) for kind, text, images in results if kind == "report"]
    if differing:
        assert reports == [(REPORT_ZH, [slices[0], slices[2]]), (other, [slices[1]])]
    else:
        assert reports == [(REPORT_ZH, slices)]
    assert [(t, i) for k, t, i in results if k == "classification"] == [("心脏增大", slices)]
    assert all(r["task"] in ("report (ct_report_zh)", "classification (chexpert_train_cls)")
               for r in d["image_results"])

    page = TestClient(client.app)
    page.cookies.set(COOKIE_NAME, env.auditor_token)
    html = page.get(f"/ui/studies/{uid}").text
    assert html.count(REPORT_ZH) == 1 and html.count("心脏增大") == 1
    assert html.count(other) == (1 if differing else 0)
    table = html[html.index('id="image-results"'):]
    table = table[: table.index("</table>")]
    assert all(sop in table for sop in slices)

    # The SR of the job says the same, item by item (the worker's contents, built and read back).
    from common.models import Job
    from sr_writer.readback import read_report
    from sr_writer.report import build_sr
    from workers.results import build_contents

    with env.session() as s:
        content = build_contents(s, env.settings, s.get_one(Job, job_id))["zh"]
    sr = read_report(build_sr(content))
    in_sr = [(r.text or (r.code or ("", "", ""))[2], [sop for _, sop, _ in r.sources])
             for r in sr.results if r.name[0] == "121071"]
    assert sorted(in_sr) == sorted((t, i) for _, t, i in results)


def test_unknown_query_parameters_are_refused(client: TestClient, env: Env) -> None:
    """A misspelt filter is a 422 naming it, never an unfiltered answer."""
    for path in ("/api/v1/findings?langauge=zh", "/api/v1/evaluations?weights_id=x&colour=red",
                 "/api/v1/admin/destinations?x=1"):
        response = client.get(path, headers=env.headers("admin"))
        assert response.status_code == 422, (path, response.text)
        assert "unknown query parameter" in response.text
    assert client.get("/api/v1/findings?language=zh", headers=env.headers("admin")).status_code == 200
