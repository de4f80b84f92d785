"""analyse_study: selection -> rendering -> prompts -> backend -> parsing -> pixels and keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from common.settings import ModelSettings
from model.analysis import analyse_study
from model.backends import load_backend
from model.backends.base import GenerationRequest, ModelBackend, ModelIdentity
from model_factory import BASIC_TEXT_SR, CR_IMAGE, ct_volume, grey_dataset, source_of, write


def radiograph(folder: Path, rows: int = 300, columns: int = 200):
    pixels = np.random.default_rng(5).integers(0, 4096, (rows, columns)).astype(np.uint16)
    ds = grey_dataset(pixels, modality="DX", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", rescale=None, body_part="CHEST",
                      window=(2048, 4096))
    return source_of(ds, write(ds, folder))


def sr_instance(folder: Path):
    ds = grey_dataset(np.zeros((2, 2), np.uint8), modality="SR", sop_class_uid=BASIC_TEXT_SR, rescale=None)
    return source_of(ds, write(ds, folder))


EN = "<ref>right lung</ref><box>[[100, 100, 480, 900]]</box>, <ref>left lung</ref><box>[[530, 120, 920, 890]]</box>: No consolidation."
ZH = "<ref>左肺</ref><box>[[532, 118, 921, 888]]</box>：未见实变。<ref>心脏</ref><box>[[300, 500, 700, 800]]</box>：心影不大。"


@pytest.fixture()
def replay_settings(tmp_path: Path) -> ModelSettings:
    path = tmp_path / "answers.jsonl"
    rows = [
        {"answer": EN, "language": "en", "prompt_contains": "report phrase grounding"},
        {"answer": ZH, "language": "zh", "prompt_contains": "定位并描述"},
        {"answer": "Findings: clear.", "language": "en"},
        {"answer": "影像诊断：未见异常。", "language": "zh"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return ModelSettings(backend="replay", path=str(path), batch_size=3, slices_per_volume=2, max_images_per_study=16)


def test_study_with_replay(tmp_path: Path, replay_settings: ModelSettings) -> None:
    dx = radiograph(tmp_path)
    volume = ct_volume(tmp_path, n=6)
    images = [sr_instance(tmp_path), dx] + volume
    messages: list[str] = []
    results = analyse_study(images, load_backend(replay_settings), replay_settings, progress=messages.append)
    assert {r.image.modality for r in results} == {"DX", "CT"}  # SR skipped
    assert len(results) == 3 * 4  # 1 radiograph + 2 slices, 4 prompts each (report + region, en + zh)
    assert messages[0].startswith("3 image(s) chosen of 8")
    ct_uids = {r.image.sop_instance_uid for r in results if r.image.modality == "CT"}
    # positions 0..50 mm, instance numbers reversed: the slices at the centres of two halves
    assert ct_uids == {volume[1].sop_instance_uid, volume[4].sop_instance_uid}

    dx_runs = [r for r in results if r.image.sop_instance_uid == dx.sop_instance_uid]
    assert [(r.language, r.task) for r in dx_runs] == [("en", "report"), ("en", "grounded_report"), ("zh", "report"), ("zh", "locate_describe")]
    en, zh = dx_runs[1], dx_runs[3]
    assert en.text.startswith("right lung, left lung: No consolidation") and not en.unparsed
    assert [r.label for r in en.regions] == ["right lung", "left lung"]
    assert en.regions[0].description == "No consolidation."
    assert en.regions[0].pixels == pytest.approx((100 / 999 * 200, 100 / 999 * 300, 480 / 999 * 200, 900 / 999 * 300))
    # left lung (en) and 左肺 (zh) overlap: one key; the others have their own
    assert en.regions[1].match_key == zh.regions[0].match_key
    keys = {en.regions[0].match_key, en.regions[1].match_key, zh.regions[1].match_key}
    assert len(keys) == 3
    assert dx_runs[0].text == "Findings: clear." and dx_runs[0].regions == []
    assert all(r.duration_s >= 0 and r.selection_reason for r in results)
    assert "CT volume: slice" in next(r for r in results if r.image.modality == "CT").selection_reason


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
    # the whole study in one call: the backend batches it (batch_size) and encodes each image once
    assert [len(b) for b in backend.batches] == [4]
    assert {r.frame_number for r in results} == {3}
    assert backend.batches[0][0].frame_number == 3 and backend.batches[0][0].sop_instance_uid == cine.sop_instance_uid
    assert any(m.startswith(f"skipped {broken.sop_instance_uid}") for m in messages)
    assert all(r.regions == [] and r.text == "" for r in results)


def test_study_through_tiny(tmp_path: Path) -> None:
    settings = ModelSettings(backend="tiny", device="cpu", max_new_tokens=6, batch_size=4)
    results = analyse_study([radiograph(tmp_path)], load_backend(settings), settings)
    assert len(results) == 4
    assert {r.language for r in results} == {"en", "zh"}
    assert all(r.raw_answer for r in results)
