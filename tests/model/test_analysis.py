"""analyse_study: selection -> rendering -> prompts -> backend -> parsing -> pixels and keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.settings import ModelSettings
from model.analysis import analyse, analyse_study
from model.backends import load_backend
from model.backends.base import GenerationRequest, ModelBackend, ModelIdentity
from tests.model.model_factory import BASIC_TEXT_SR, ct_volume, grey_dataset, source_of, write


def radiograph(folder: Path, rows: int = 300, columns: int = 200):
    pixels = np.random.default_rng(5).integers(0, 4096, (rows, columns)).astype(np.uint16)
    ds = grey_dataset(pixels, modality="DX", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", rescale=None, body_part="CHEST",
                      window=(2048, 4096))
    return source_of(ds, write(ds, folder))


def sr_instance(folder: Path):
    ds = grey_dataset(np.zeros((2, 2), np.uint8), modality="SR", sop_class_uid=BASIC_TEXT_SR, rescale=None)
    return source_of(ds, write(ds, folder))


EN = "<ref>right lung</ref><box>[[100, 100, 480, 900]]</box>, <ref>left lung</ref><box>[[530, 120, 920, 890]]</box>: No consolidation. Compared to prior, unchanged."
REPORT = "Findings: In comparison with the study of ___, there is little overall change. The heart is enlarged.\nImpression: Cardiomegaly."


def lateral(folder: Path):
    pixels = np.random.default_rng(6).integers(0, 4096, (120, 100)).astype(np.uint16)
    ds = grey_dataset(pixels, modality="DX", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", rescale=None, body_part="CHEST",
                      window=(2048, 4096))
    ds.PatientOrientation = ["P", "F"]  # rows run posterior: a lateral film
    return source_of(ds, write(ds, folder))


def with_header(folder: Path, **attributes):
    ds = grey_dataset(np.zeros((32, 32), np.int16), modality="CT", body_part="ABDOMEN")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return source_of(ds, write(ds, folder))


@pytest.fixture()
def replay_settings(tmp_path: Path) -> ModelSettings:
    path = tmp_path / "answers.jsonl"
    rows = [
        {"answer": EN, "training_set": "grounded_reports_mimiccxr"},
        {"answer": REPORT, "training_set": "mimiccxr_train_rg"},
        {"answer": "Cardiomegaly and", "training_set": "chexpert_train_cls", "truncated": True},
        {"answer": "nothing I know", "training_set": "vindrcxr_train_cls"},
        {"answer": "<ref>liver</ref><box>[[100, 100, 400, 500]]</box>", "training_set": "text2region", "prompt_contains": "<ref>liver</ref>"},
        {"answer": "liver", "training_set": "region2text"},
        {"answer": "影像诊断：肝脏形态正常。与前片比较无变化。", "language": "zh"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return ModelSettings(backend="replay", path=str(path), batch_size=3, slices_per_volume=2, max_images_per_study=16)


def test_study_with_replay(tmp_path: Path, replay_settings: ModelSettings) -> None:
    dx, side = radiograph(tmp_path), lateral(tmp_path)
    volume = ct_volume(tmp_path, n=6)
    scout = ct_volume(tmp_path, n=2, seed=3)  # two images: no volume
    dose = with_header(tmp_path, SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    derived = with_header(tmp_path, ImageType=["DERIVED", "SECONDARY", "MPR"])
    localizer = with_header(tmp_path, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    burned = with_header(tmp_path, BurnedInAnnotation="YES")
    images = [sr_instance(tmp_path), dx, side] + volume + scout + [dose, derived, localizer, burned]
    messages: list[str] = []
    analysis = analyse(images, load_backend(replay_settings), replay_settings, progress=messages.append)
    results = analysis.runs
    excluded = {d.image.sop_instance_uid: d.reason for d in analysis.selection.excluded if d.image is not None}
    assert "not an image" in excluded[images[0].sop_instance_uid]
    assert "Secondary Capture" in excluded[dose.sop_instance_uid]
    assert "ORIGINAL/PRIMARY" in excluded[derived.sop_instance_uid]
    assert "localizer" in excluded[localizer.sop_instance_uid]
    assert "Burned In Annotation" in excluded[burned.sop_instance_uid]
    assert all("min_volume_slices" in excluded[s.sop_instance_uid] for s in scout)
    assert any(d.image is None and "4 of 6 slices not sent" in d.reason for d in analysis.selection.excluded)
    assert messages[0].startswith("4 image(s) chosen of 15")

    frontal = [r for r in results if r.image.sop_instance_uid == dx.sop_instance_uid]
    assert [(r.plan, r.training_set) for r in frontal] == [("chest-xray-frontal", s) for s in (
        "mimiccxr_train_rg", *["grounded_reports_mimiccxr"] * 4, "chexpert_train_cls", "vindrcxr_train_cls")]
    assert all(r.language == "en" and r.view == "frontal" and r.prompt.startswith("<image>\n") for r in frontal)
    report = frontal[0]
    assert report.text == "Findings: The heart is enlarged.\nImpression: Cardiomegaly."
    assert [x.reason for x in report.removed] == ["prior_study"]
    grounded = frontal[1]
    assert [r.label for r in grounded.regions] == ["right lung", "left lung"]
    assert grounded.regions[0].description == "No consolidation."
    assert grounded.regions[0].pixels == pytest.approx((100 / 999 * 200, 100 / 999 * 300, 480 / 999 * 200, 900 / 999 * 300))
    assert [x.sentence for x in grounded.removed] == ["Compared to prior, unchanged."] * 2
    chexpert, vindr = frontal[5], frontal[6]
    assert chexpert.truncated and chexpert.classification is not None
    assert chexpert.classification.option == "Cardiomegaly"
    assert vindr.classification is None and not vindr.truncated

    side_runs = [r for r in results if r.image.sop_instance_uid == side.sop_instance_uid]
    assert [(r.plan, r.task, r.view) for r in side_runs] == [("chest-xray-lateral", "classification", "lateral")]
    assert "lateral view (Patient Orientation P\\F" in side_runs[0].selection_reason

    ct = [r for r in results if r.image.modality == "CT"]
    assert {r.image.sop_instance_uid for r in ct} == {volume[1].sop_instance_uid, volume[4].sop_instance_uid}
    one_slice = [r for r in ct if r.image.sop_instance_uid == volume[1].sop_instance_uid]
    assert [r.task for r in one_slice] == ["report"] + ["detection"] * 5 + ["region_to_text"]
    assert one_slice[0].language == "zh" and one_slice[0].text == "影像诊断：肝脏形态正常。"
    liver = one_slice[1].regions[0]
    assert liver.label == "liver" and liver.description == "liver" and liver.description_language == "en"
    assert one_slice[-1].describes == liver.match_key
    assert "<box>[[100, 100, 400, 500]]</box> in this CT scan?" in one_slice[-1].prompt
    assert all(r.duration_s >= 0 and r.selection_reason for r in results)


def test_prompt_layout_demo(tmp_path: Path, replay_settings: ModelSettings) -> None:
    settings = replay_settings.model_copy(update={"prompt_layout": "demo"})
    runs = analyse_study([radiograph(tmp_path)], load_backend(settings), settings)
    assert runs[0].prompt.endswith("final diagnosis. <image>\n")
    assert runs[0].text.startswith("Findings: The heart")


class _Recorder(ModelBackend):
    identity = ModelIdentity("replay", "recorder (test, not MedRegA)", "1", "x")

    def __init__(self) -> None:
        self.batches: list[list[GenerationRequest]] = []

    def generate(self, requests):
        self.batches.append(list(requests))
        return [""] * len(requests)


def test_batches_frames_and_undecodable_images(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 16), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    ds = grey_dataset(frames, modality="XA", sop_class_uid="1.2.840.10008.5.1.4.1.1.12.1", rescale=None)
    cine = source_of(ds, write(ds, tmp_path))
    broken = radiograph(tmp_path)
    broken.path.write_bytes(b"truncated")
    backend = _Recorder()
    messages: list[str] = []
    settings = ModelSettings(backend="replay", batch_size=3)
    results = analyse_study([cine, broken], backend, settings, progress=messages.append)
    assert [len(b) for b in backend.batches] == [1]  # the generic plan: one prompt
    assert {r.frame_number for r in results} == {3}
    assert backend.batches[0][0].frame_number == 3 and backend.batches[0][0].sop_instance_uid == cine.sop_instance_uid
    assert any(m.startswith(f"skipped {broken.sop_instance_uid}") for m in messages)
    assert all(r.regions == [] and r.text == "" for r in results)


def test_study_through_tiny(tmp_path: Path) -> None:
    settings = ModelSettings(backend="tiny", device="cpu", max_new_tokens=6, batch_size=4)
    results = analyse_study([radiograph(tmp_path)], load_backend(settings), settings)
    assert len(results) == 7  # the frontal chest plan
    assert {r.language for r in results} == {"en"}
    assert all(r.raw_answer for r in results)
