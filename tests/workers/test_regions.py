"""Region numbers follow the study, not the arrival; one Finding code per box in both languages."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from common.db import installation_uid_root, session_scope
from common.models import Document, Finding, Instance, Job, JobState, Series
from sr_writer import coding
from sr_writer.readback import read_report
from tests.e2e.harness import write_bilingual_region_plans
from tests.workers.test_tasks import received_job

#: Every image gets two boxes in each language: the heart (in the table, named differently in
#: each language) and a shadow the table does not know (a local code).
REPLAY_LINES = [
    {"language": "en", "prompt_contains": "<ref>",
     "answer": "<ref>odd shadow</ref><box>[[100, 100, 300, 200]]</box>: faint, "
               "<ref>heart</ref><box>[[400, 450, 700, 800]]</box>: big"},
    {"language": "zh", "prompt_contains": "<ref>",
     "answer": "<ref>心影</ref><box>[[402, 452, 698, 801]]</box>：增大，"
               "<ref>奇怪阴影</ref><box>[[101, 99, 301, 201]]</box>：淡"},
    {"language": "en", "answer": "Findings: cardiomegaly."},
    {"language": "zh", "answer": "影像结论：心影增大。"},
]


def _run(tmp_path: Path, url: str, arrival, monkeypatch: pytest.MonkeyPatch) -> dict:
    import workers.tasks as tasks

    plans = write_bilingual_region_plans(tmp_path)
    settings, job_id = received_job(tmp_path, url, replay_lines=REPLAY_LINES, arrival=arrival,
                                    model={"plans_path": str(plans)})
    monkeypatch.setattr(tasks, "publish_delivery", lambda delivery_id: None)  # no broker here
    assert tasks.run_job(job_id) == "done"
    with session_scope(settings.database_url) as s:
        written = sorted(d.sop_instance_uid for d in s.scalars(select(Document)).all())
        s.get_one(Job, job_id).state = JobState.QUEUED  # an administrator's retry: inference and SRs again
    assert tasks.run_job(job_id) == "done"
    with session_scope(settings.database_url) as s:
        findings = s.scalars(select(Finding).where(Finding.kind == "region").order_by(Finding.id)).all()
        order = {i.sop_instance_uid: (i.series.series_number, i.instance_number, i.id)
                 for i in s.scalars(select(Instance).join(Series)).all()}
        srs = {d.language: pydicom.dcmread(settings.data_dir / d.path)
               for d in s.scalars(select(Document).where(Document.kind == "sr")).all()}
        return {
            # A box: its image, language and label (Tracking UIDs differ between installations).
            "numbers": {(f.referenced_sop_instance_uid, f.language, f.label): f.tracking_identifier
                        for f in findings},
            "findings": [(f.language, f.label, f.tracking_uid, f.tracking_identifier, f.referenced_sop_instance_uid,
                          (f.code_value, f.code_scheme, f.code_meaning)) for f in findings],
            "order": order,
            "srs": srs,
            "settings": settings,
            "written_before_retry": written,
            "uid_root": installation_uid_root(s),
            "study_instance_uid": s.get_one(Instance, 1).study.study_instance_uid,
        }


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """The same study processed by two gateways, its instances arriving in opposite orders."""
    from common.db import upgrade

    runs = []
    for name, arrival in (("as-sent", list), ("reversed", lambda files: list(reversed(files)))):
        folder = tmp_path / name
        folder.mkdir()
        url = f"sqlite:///{folder / 'gateway.db'}"
        upgrade(url)
        runs.append(_run(folder, url, arrival, monkeypatch))
    return runs[0], runs[1]


def test_numbers_follow_series_instance_and_position_not_arrival(two_runs) -> None:
    first, second = two_runs
    # The instances arrived in opposite orders ...
    arrival = lambda run: sorted(run["order"], key=lambda uid: run["order"][uid][2])  # noqa: E731
    assert arrival(first) == list(reversed(arrival(second)))
    # ... yet every box keeps its number.
    assert first["numbers"] == second["numbers"]
    boxes = {tracking_uid for (_, _, tracking_uid, _, _, _) in first["findings"]}
    assert sorted(set(first["numbers"].values()), key=lambda t: int(t.split()[1])) == [
        f"region {n}" for n in range(1, len(boxes) + 1)]
    # Numbers go up with (series number, instance number), then top-down within an image.
    by_number = sorted({(int(n.split()[1]), uid) for (_, _, _, n, uid, _) in first["findings"]})
    keys = [first["order"][uid][:2] for _, uid in by_number]
    assert keys == sorted(keys)
    per_image: dict[str, list[tuple[int, str]]] = {}
    for language, label, _, number, uid, _ in first["findings"]:
        if language == "en":
            per_image.setdefault(uid, []).append((int(number.split()[1]), label))
    for image_boxes in per_image.values():
        assert [label for _, label in sorted(image_boxes)] == ["odd shadow", "heart"]  # the shadow is higher up


def test_one_code_per_box_in_both_languages_and_in_the_database(two_runs) -> None:
    first, _ = two_runs
    heart = coding.lookup_finding_code("heart")
    assert heart is not None
    codes: dict[str, dict[str, tuple]] = {}
    for language, label, tracking_uid, _, _, code in first["findings"]:
        assert all(code), f"{language} {label!r}: no code stored"
        codes.setdefault(tracking_uid, {})[language] = code
    for by_language in codes.values():
        assert sorted(by_language) == ["en", "zh"]
        (value_en, scheme_en, meaning_en), (value_zh, scheme_zh, meaning_zh) = by_language["en"], by_language["zh"]
        assert (value_en, scheme_en) == (value_zh, scheme_zh)  # one code per Tracking UID
        if value_en == heart.value:
            assert (meaning_en, meaning_zh) == (heart.meaning_en, heart.meaning_zh)  # "心影" is a synonym
        else:  # unknown to the table: the local code of the English label, each language's own words
            assert scheme_en == coding.LOCAL_SCHEME and value_en == coding.local_code("odd shadow").value
            assert (meaning_en, meaning_zh) == ("odd shadow", "奇怪阴影")
    # Both SRs carry exactly these codes, box by box.
    for language, sr in first["srs"].items():
        for region in read_report(sr).regions:
            assert region.finding == codes[region.tracking_uid][language]


def test_api_and_study_page_show_the_stored_codes(two_runs) -> None:
    """The API lists each finding with its code; the study page shows it next to both names."""
    from fastapi.testclient import TestClient

    from gateway.api.app import create_app
    from gateway.api.ui import COOKIE_NAME
    from common.db import session_factory
    from gateway.tokens import create_token

    first, _ = two_runs
    settings = first["settings"]
    with session_factory(settings.database_url)() as s:
        token = create_token(s, "carol-auditor", "auditor")
        s.commit()
    stored = {(language, label): code for language, label, _, _, _, code in first["findings"]}
    with TestClient(create_app(settings)) as client:
        listed = client.get("/api/v1/findings", params={"limit": 100},
                            headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        items = [f for f in listed.json()["items"] if f["kind"] == "region"]  # not the report texts
        assert items and {(f["language"], f["label"]): (f["code_value"], f["code_scheme"], f["code_meaning"])
                          for f in items} == stored
        page = client.get(f"/ui/studies/{first['study_instance_uid']}", headers={"Cookie": f"{COOKIE_NAME}={token}"})
        assert page.status_code == 200, page.text[:500]
    for value, scheme, _ in set(stored.values()):
        assert f"{scheme} {value}" in page.text


def test_a_retry_rewrites_the_same_uids_two_installations_never_share_one(two_runs) -> None:
    """SR, presentation state and Tracking UIDs derive from the installation's UID root: the same
    installation re-running a job writes the same instances; another installation, processing
    the same study, mints other UIDs for its (possibly different) documents."""
    first, second = two_runs
    assert first["uid_root"] != second["uid_root"]
    for run in (first, second):
        assert sorted(ds.SOPInstanceUID for ds in run["srs"].values()) == run["written_before_retry"]
    uids = {run_index: {str(ds.SOPInstanceUID) for ds in run["srs"].values()}
                       | {str(ds.SeriesInstanceUID) for ds in run["srs"].values()}
                       | {tracking_uid for (_, _, tracking_uid, _, _, _) in run["findings"]}
            for run_index, run in enumerate((first, second))}
    assert uids[0] and not uids[0] & uids[1]
    study_uid = first["study_instance_uid"]
    assert study_uid == second["study_instance_uid"]
    # Both follow the documented derivation from their own root.
    from sr_writer.report import sr_uids

    for run in (first, second):
        for language, ds in run["srs"].items():
            assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == sr_uids(study_uid, 1, language, run["uid_root"])

