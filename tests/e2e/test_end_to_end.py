"""Issues 2 and 14, end to end through real peers.

DCMTK ``storescu`` sends the sample study (gateway/samples.py: a chest CT of five slices with a
localizer series and a dose sheet, a brain MR of five slices, a chest PA and a lateral
radiograph) to ``medrega-gateway serve``; a DCMTK ``storescp`` plays the PACS and must receive
exactly one SR per language; ``dsrdump`` must show the Chinese text intact, ``dciodvfy`` must
report no error, and every SCOORD must reference an instance the gateway received with points
equal to the replayed box mapped to that image's pixels. The replay answers key on MedRegA's
trained instructions, so what reaches the PACS shows which image got which trained prompt
(issue 14): :func:`_check_trained_prompts`.

Runs three ways: embedded defaults (SQLite, embedded broker, worker inside ``serve``), production
mode (PostgreSQL, the Redis server, a separate ``worker`` process), and the ``tiny`` backend.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from common.db import session_scope
from common.models import Delivery, DeliveryState, Finding, Instance, Job, JobState
from gateway.demo.samples import make_sample_study
from common.settings import load_settings
from tests.conftest import require_tool
from tests.e2e.harness import (
    StoreSCP,
    cli,
    free_port,
    gateway_process,
    port_open,
    reference_answers,
    storescu,
    wait_for,
    write_config,
    write_replay,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]

CODE_TRACKING_UID = "112040"  # DCM "Tracking Unique Identifier"


#: Replayed answers that are not reference lines: a detection box on the chest CT and its
#: region description, and a classification answer cut off at max_new_tokens.
CT_LUNG_BOX = "<ref>right lung</ref><box>[[120, 200, 470, 800]]</box>"
TRUNCATED_VINDR = "Cardiomegaly, Pleural"


def _replay_lines() -> list[dict]:
    """What the model "says", keyed on the trained instruction of each prompt (issue 14)."""
    ref = reference_answers()
    return [
        # Chest PA: the MIMIC-CXR report (reference line 4 compares with a prior study that was
        # never given), the grounded report of the lungs (line 9), CheXpert and VinDr-CXR.
        {"training_set": "mimiccxr_train_rg", "answer": ref[4]},
        {"training_set": "grounded_reports_mimiccxr", "prompt_contains": "<ref>right lung</ref>, <ref>left lung</ref>",
         "answer": ref[9]},
        {"training_set": "chexpert_train_cls", "answer": "Cardiomegaly"},
        {"training_set": "vindrcxr_train_cls", "answer": TRUNCATED_VINDR, "truncated": True},
        # Chest CT: the right lung found on each slice, and the box described.
        {"training_set": "text2region", "prompt_contains": "<ref>right lung</ref>", "answer": CT_LUNG_BOX},
        {"training_set": "region2text", "answer": "right lung"},
        # CT and MR: the Chinese report (reference line 5, the demo's brain MR report).
        {"language": "zh", "prompt_contains": "生成诊断报告", "answer": ref[5]},
    ]


def _storescu(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stdout + result.stderr


def _validate(path: Path) -> None:
    from tests.peers.dciodvfy import validate

    errors, warnings = validate(path)
    assert errors == [], f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
    if warnings:
        print(f"dciodvfy warnings for {path.name}:\n  " + "\n  ".join(warnings))


def _content_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _run_scenario(tmp_path: Path, *, backend: str, database_url: str = "", broker_url: str = "",
                  separate_worker: bool = False, extra: str = "", timeout: float = 240,
                  gsps_destination: bool = False, model: dict | None = None) -> dict:
    sample = make_sample_study(tmp_path / "study")
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in sample.files}
    ct_uid = next(h.SOPInstanceUID for h in headers.values() if h.Modality == "CT")
    cr_uid = next(h.SOPInstanceUID for h in headers.values() if h.Modality == "CR")
    model_path = ""
    if backend == "replay":
        model_path = str(write_replay(tmp_path / "replay.jsonl", _replay_lines()))
    node_port, pacs_port = free_port(), free_port()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    destinations = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    viewer = None
    if gsps_destination:
        viewer_port = free_port()
        viewer = StoreSCP(tmp_path / "viewer", viewer_port, ae_title="VIEWER").start()
        destinations.append({"name": "viewer", "ae_title": "VIEWER", "host": "127.0.0.1", "port": viewer_port,
                             "send": "sr+gsps"})
    config = write_config(tmp_path, node_port=node_port, backend=backend, model_path=model_path,
                          database_url=database_url, broker_url=broker_url, extra=extra,
                          destinations=destinations, sections={"model": model} if model else None)
    cli(config, "db", "upgrade")
    serve = gateway_process(config, "serve", tmp_path / "serve.log").start()
    procs = [serve, pacs] + ([viewer] if viewer else [])
    if separate_worker:
        procs.append(gateway_process(config, "worker", tmp_path / "worker.log").start())
    try:
        wait_for(lambda: port_open(node_port), 60, "the DICOM node to listen", procs)
        _storescu(node_port, sample.files)
        settings_url = database_url or f"sqlite:///{tmp_path / 'var' / 'gateway.db'}"

        def delivered() -> bool:
            with session_scope(settings_url) as s:
                jobs = s.scalars(select(Job)).all()
                dead = [j.error for j in jobs if j.error or j.state in (JobState.DEAD, JobState.FAILED)]
                assert not dead, f"job failed: {dead}"
                return bool(jobs) and all(j.state == JobState.DELIVERED for j in jobs)

        wait_for(delivered, timeout, "the job to be delivered", procs)
        time.sleep(2.0)  # a duplicate send, if any, would arrive now
        metrics_port = load_settings(config, environ={}).node.metrics_port
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        status = cli(config, "status", check=False)
        with session_scope(settings_url) as s:
            received = {i.sop_instance_uid: i for i in s.scalars(select(Instance)).all()}
            findings = s.scalars(select(Finding).where(Finding.kind == "region")).all()
            deliveries = s.scalars(select(Delivery)).all()
            jobs = s.scalars(select(Job)).all()
            state = {
                "received": {uid: (i.rows, i.columns) for uid, i in received.items()},
                "findings": [(f.language, f.label, f.referenced_sop_instance_uid,
                              (f.box_x1, f.box_y1, f.box_x2, f.box_y2), f.tracking_uid) for f in findings],
                "deliveries": [(d.state, d.attempts) for d in deliveries],
                "jobs": len(jobs),
            }
        return {"metrics": metrics, "status": status, "pacs_files": pacs.files(), "viewer_files": viewer.files() if viewer else [], "state": state, "sample": sample, "ct_uid": ct_uid, "cr_uid": cr_uid, "headers": headers}
    finally:
        for p in procs:
            p.stop()


def file_of(ds: pydicom.Dataset) -> Path:
    """The file ``ds`` was read from."""
    assert isinstance(ds.filename, str), "read from a file"
    return Path(ds.filename)


def _check_srs(result: dict, expect_model: str) -> dict[str, pydicom.Dataset]:
    files = result["pacs_files"]
    srs: dict[str, pydicom.Dataset] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality == "SR"
        assert ds.VerificationFlag == "UNVERIFIED"
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.StudyInstanceUID == result["sample"].study_instance_uid
        assert ds.PatientID == result["sample"].patient_id
        lang = next(i.ConceptCodeSequence[0].CodeValue for i in _content_items(ds)
                    if i.ConceptNameCodeSequence[0].CodeValue == "121049")  # Language of Content Item
        assert lang not in srs, f"two SRs in language {lang}"
        srs[lang] = ds
        _validate(f)
        text = str(ds.to_json_dict())
        assert expect_model in text, f"the SR does not name the model {expect_model!r}"
        if expect_model != "MedRegA":  # a test model never claims to be MedRegA
            assert text.count("MedRegA") == text.count("not MedRegA"), "a test model's SR claims to be MedRegA"
    assert sorted(srs) == ["en", "zh"], f"expected one SR per language, PACS got {[f.name for f in files]}"
    assert len(files) == 2, f"PACS received {len(files)} objects, expected exactly 2"
    return srs


def _check_scoords(result: dict, srs: dict[str, pydicom.Dataset]) -> int:
    """Every SCOORD of both SRs sits where the recorded box maps to; returns how many boxes (Image
    Region, DCM 111030) there are (the NUMs of a box carry the same SCOORD again)."""
    received = result["state"]["received"]
    boxes: dict[str, list] = {uid: [] for (_, _, uid, _, _) in result["state"]["findings"]}
    for _, _, uid, box, _ in result["state"]["findings"]:
        boxes[uid].append(box)
    checked = 0
    for ds in srs.values():
        for item in _content_items(ds):
            if item.ValueType != "SCOORD":
                continue
            ref = item.ContentSequence[0].ReferencedSOPSequence[0]
            uid = ref.ReferencedSOPInstanceUID
            assert uid in received, "SCOORD references an instance the gateway never received"
            rows, columns = received[uid]
            assert item.GraphicType == "POLYLINE"
            pts = [float(v) for v in item.GraphicData]
            assert len(pts) == 10 and pts[:2] == pts[8:], "not a closed rectangle"
            xs, ys = pts[0::2], pts[1::2]
            got = (min(xs), min(ys), max(xs), max(ys))
            expected = [(x1 / 999 * columns, y1 / 999 * rows, x2 / 999 * columns, y2 / 999 * rows)
                        for (x1, y1, x2, y2) in boxes[uid]]
            assert any(all(abs(g - e) < 1e-3 for g, e in zip(got, exp)) for exp in expected), (got, expected)
            # Count the Image Regions (one per box); the copies INFERRED FROM under each NUM,
            # there for OHIF (docs/sr-content.md), are checked above as well.
            checked += item.ConceptNameCodeSequence[0].CodeValue == "111030"
    return checked


def _by_file(result: dict) -> dict[str, str]:
    """SOP Instance UID of each sample file, by file name."""
    return {path.name: ds.SOPInstanceUID for path, ds in result["headers"].items()}


def _referenced(item: pydicom.Dataset) -> set[str]:
    return {ref.ReferencedSOPInstanceUID for child in item.get("ContentSequence", [])
            for ref in child.get("ReferencedSOPSequence", [])}


def _language_of(item: pydicom.Dataset) -> str | None:
    """The TID 1204 Language of Content Item an item carries itself (None: the document's)."""
    for child in item.get("ContentSequence", []):
        if child.ConceptNameCodeSequence[0].CodeValue == "121049":
            return child.ConceptCodeSequence[0].CodeValue
    return None


def _check_trained_prompts(result: dict, srs: dict[str, pydicom.Dataset]) -> None:
    """Issue 14 at the PACS: which image got which trained prompt, and how the rules were kept."""
    uid = _by_file(result)
    pa, lateral = uid["cr_1.dcm"], uid["cr_lateral.dcm"]
    localizer, dose = uid["ct_4_localizer.dcm"], uid["ct_5_dose_sheet.dcm"]
    ct_chosen = {uid[f"ct_1_{k}.dcm"] for k in (1, 3, 5)}  # 3 of 5 slices, spread along the normal
    mr_chosen = {uid[f"mr_2_{k}.dcm"] for k in (1, 3, 5)}
    for language, ds in srs.items():
        everything = str(ds.to_json_dict())
        # Localizer and dose sheet (Secondary Capture) never reached the model: not even evidence.
        assert localizer not in everything and dose not in everything
        evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert evidence == {pa, lateral} | ct_chosen | mr_chosen, language
        items = list(_content_items(ds))
        texts = [(i.TextValue, _referenced(i), _language_of(i)) for i in items
                 if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121071"]
        codes = [(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning, _referenced(i))
                 for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
                 and _referenced(i)]  # image-level findings (a region's Finding is in its group)
        comments = [i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
        scoord_images = {ref for i in items if i.ValueType == "SCOORD" for ref in _referenced(i)}
        # The MIMIC-CXR report (English-trained) on the PA film only, its prior-study sentence left out.
        english = [(t, refs) for t, refs, lang in texts if (lang or language) == "en"]
        assert [refs for _, refs in english] == [{pa}]
        assert english[0][0].startswith("Findings: Continued enlargement") and "___" not in english[0][0]
        # The Chinese report (the only trained report for CT and MR) on the chosen CT and MR slices:
        # the same answer on the 3 slices of a series is one item referencing the 3 slices.
        chinese = [refs for _, refs, lang in texts if (lang or language) == "zh"]
        assert sorted(chinese, key=sorted) == sorted([ct_chosen, mr_chosen], key=sorted)
        # Each text in the language it was trained in, and marked so when not the document's.
        assert all((lang is None) == (lang_of_text == language) for _, _, lang in texts
                   for lang_of_text in [lang or language])
        # Regions: the grounded report on the PA film, the detection on the CT slices; the lateral
        # film got no report or grounding prompt, only CheXpert classification.
        assert scoord_images == {pa} | ct_chosen
        # Classification coded at image level (SNOMED CT), meaning in the SR's language: CheXpert
        # on PA and lateral, VinDr-CXR on PA (its cut-off answer still maps to an option).
        meaning = "Cardiomegaly" if language == "en" else "心脏增大"
        assert sorted((c, m, tuple(r)) for c, m, r in codes) == sorted(
            [("287272002", meaning, (pa,))] * 2 + [("287272002", meaning, (lateral,))])
        # The truncated answer and the prior-study sentence are flagged, not findings.
        assert ds.CompletionFlag == "PARTIAL"
        assert any("vindrcxr_train_cls" in c for c in comments), comments
        assert any("In comparison with the study of ___" in c for c in comments), comments
        assert TRUNCATED_VINDR not in [t for t, _, _ in texts]


def test_embedded_defaults_replay(tmp_path: Path) -> None:
    """serve on embedded defaults: SQLite, embedded broker, worker in the same process."""
    result = _run_scenario(tmp_path, backend="replay")
    srs = _check_srs(result, expect_model="replay")
    # Reference line 9 (2 regions) on the PA film, one detected box on each of 3 CT slices.
    assert _check_scoords(result, srs) == 2 * (2 + 3)
    _check_trained_prompts(result, srs)
    assert [s for s, _ in result["state"]["deliveries"]] == [DeliveryState.SENT] * 2
    # Observability of the running service: /metrics from serve, and `status` (all up: exit 0).
    assert "medrega_instances_received_total 14.0" in result["metrics"]
    assert 'medrega_jobs{state="delivered"} 1.0' in result["metrics"]
    status = result["status"]
    assert status.returncode == 0, status.stdout + status.stderr
    for component in ("database", "broker", "workers", "node", "destination pacs"):
        assert any(line.startswith("ok") and component in line for line in status.stdout.splitlines()), status.stdout
    dump = subprocess.run([require_tool("dsrdump"), "+U8", "+Pl", str(srs["zh"].filename)], capture_output=True, timeout=30)
    text = dump.stdout.decode("utf-8")
    assert "右侧颞枕部" in text and "心脏增大" in text, text[:2000]


def test_production_mode_redis_postgres_separate_worker(tmp_path: Path, redis_url: str, postgres_url: str) -> None:
    """queue.broker_url on the Redis server, PostgreSQL database, work done by a `worker` process."""
    result = _run_scenario(tmp_path, backend="replay", database_url=postgres_url, broker_url=redis_url,
                           separate_worker=True)
    srs = _check_srs(result, expect_model="replay")
    assert _check_scoords(result, srs) == 2 * (2 + 3)
    _check_trained_prompts(result, srs)


def test_tiny_backend_real_generate_path(tmp_path: Path) -> None:
    """The tiny random model runs the real generate path on the CPU; its SRs are valid and say so.

    Its random answers never reach <|im_end|> within model.max_new_tokens: the engine marks them
    truncated, and the SRs are PARTIAL and say which answers were cut off (issue 14)."""
    result = _run_scenario(tmp_path, backend="tiny", model={"max_new_tokens": 12}, timeout=400)
    srs = _check_srs(result, expect_model="tiny")
    for ds in srs.values():
        content = str(ds.get("ContentSequence"))
        assert content.count("MedRegA") == content.count("not MedRegA")
        assert ds.CompletionFlag == "PARTIAL"
        comments = [i.TextValue for i in _content_items(ds) if i.ValueType == "TEXT"
                    and i.ConceptNameCodeSequence[0].CodeValue == "121106" and "mimiccxr_train_rg" in i.TextValue]
        assert comments, "the cut-off MIMIC-CXR report is not noted"


def test_presentation_states_for_a_destination_that_wants_them(tmp_path: Path) -> None:
    """A destination with send = "sr+gsps" also gets one GSPS per image with regions (both
    languages as layers); the plain destination gets the SRs only."""
    result = _run_scenario(tmp_path, backend="replay", gsps_destination=True)
    _check_srs(result, expect_model="replay")
    viewer = [pydicom.dcmread(f) for f in result["viewer_files"]]
    kinds = sorted(ds.Modality for ds in viewer)
    # Regions on the PA film and on the 3 chosen CT slices: four images, one presentation state each.
    assert kinds == ["PR"] * 4 + ["SR", "SR"], kinds
    images_with_regions = {uid for (_, _, uid, _, _) in result["state"]["findings"]}
    referenced: set[str] = set()
    for ds in viewer:
        if ds.Modality != "PR":
            continue
        _validate(file_of(ds))
        for series in ds.ReferencedSeriesSequence:
            referenced.update(i.ReferencedSOPInstanceUID for i in series.ReferencedImageSequence)
        layers = {layer.GraphicLayer for layer in ds.GraphicLayerSequence}
        image_uid = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
        assert image_uid in images_with_regions
        # Both SRs carry every region (a task trained in one language is reported in both
        # SRs): one layer per SR language, labels in that language.
        assert layers == {"MEDREGA_EN", "MEDREGA_ZH"}
    assert referenced == images_with_regions
