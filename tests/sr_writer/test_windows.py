"""Issue 12: every picture of a finding uses the CT window of the model run that found it.

A chest CT slice with a lung-window box and a mediastinal-window box (plans.toml reads a chest
slice on both windows): the SR records each box's window (TID 4019 Algorithm Parameters),
``medrega-gateway render`` draws each box on the picture :func:`model.imaging.prepare_image`
gives for that window, and the presentation states are one per window, with the preset as their
Softcopy VOI LUT and that window's boxes only. The header window (soft tissue 40/400) differs from
both, so a box drawn on the default picture fails.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from common.uids import derive_uid
from model.imaging import CT_PRESETS, prepare_image
from sr_writer.content import ReportContent
from sr_writer.errors import InvalidContentError
from sr_writer.gsps import plan_presentation_states
from sr_writer.io import write_dataset
from sr_writer.readback import read_report
from sr_writer.render import COLOURS, render_command
from sr_writer.report import build_sr
from tests.conftest import require_tool
from tests.peers.dciodvfy import validate
from tests.peers.dcmtk import peer_env
from tests.sr_writer.explained import unexplained
from tests.sr_writer.samples import (
    MEDREGA,
    WHEN,
    WINDOW_BOXES,
    WINDOWED_CT_SIZE,
    inside,
    windowed_chest_ct,
    windowed_regions,
)

WINDOWS = tuple(WINDOW_BOXES)


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Dataset]:
    """The CT slice and its English and Chinese SRs in one folder, as PACS would leave them."""
    folder = tmp_path / "study"
    folder.mkdir()
    uids = [derive_uid("ct-windows", part) for part in ("study", "series", "image")]
    ct_path = folder / "ct.dcm"
    windowed_chest_ct(*uids).save_as(ct_path, enforce_file_format=True)
    ct = pydicom.dcmread(ct_path)
    for language in ("en", "zh"):
        write_dataset(build_sr(_content(ct, language)), folder / f"sr_{language}.dcm")
    return folder, ct


def _content(ct: Dataset, language: str) -> ReportContent:
    header = pydicom.dcmread(ct.filename, stop_before_pixels=True)
    return ReportContent(
        language=language, evidence=[header], report_texts=[], regions=windowed_regions(ct, language),
        algorithm=MEDREGA, study_version=1, content_datetime=WHEN, institution_name="Test Hospital",
    )


def _picture(ct: Dataset, window: str | None) -> np.ndarray:
    return np.asarray(prepare_image(ct, None, window).rgb)


def test_the_pictures_differ_inside_the_boxes(study) -> None:
    """The premise: inside each box, the lung, mediastinal and header windows give other pixels."""
    _, ct = study
    pictures = {w: _picture(ct, w) for w in (*WINDOWS, None)}
    for window, box in WINDOW_BOXES.items():
        rows, columns = inside(box)
        own = pictures[window][rows, columns]
        assert own.std() > 5, "one flat grey would prove nothing"
        for other in (w for w in pictures if w != window):
            assert not np.array_equal(own, pictures[other][rows, columns]), (window, other)


def _items(item: Dataset) -> list[Dataset]:
    """Every content item under ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        found += [child, *_items(child)]
    return found


def test_the_sr_records_each_box_window(study) -> None:
    folder, _ = study
    for language in ("en", "zh"):
        ds = pydicom.dcmread(folder / f"sr_{language}.dcm")
        report = read_report(ds)
        assert {r.window: r.box for r in report.regions} == WINDOW_BOXES
        parameters = [str(item.TextValue) for item in _items(ds) if item.ValueType == "TEXT"
                      and item.ConceptNameCodeSequence[0].CodeValue == "111002"]  # Algorithm Parameters
        assert "window: lung (center -600 HU, width 1500 HU)" in parameters
        assert "window: mediastinum (center 40 HU, width 350 HU)" in parameters


def test_an_unknown_window_is_refused(study) -> None:
    _, ct = study
    content = _content(ct, "en")
    regions = [dataclasses.replace(r, window="abdomen" if r.window == "lung" else r.window) for r in content.regions]
    content = dataclasses.replace(content, regions=regions)
    with pytest.raises(InvalidContentError, match="unknown CT window 'abdomen'"):
        build_sr(content)


def _panel_tops(pixels: np.ndarray, expected: np.ndarray, box: tuple[float, float, float, float]) -> list[int]:
    """Rows of ``pixels`` where a 512-row panel starts whose inside of ``box`` is ``expected``'s."""
    rows, columns = inside(box)
    want = expected[rows, columns]
    return [top for top in range(pixels.shape[0] - WINDOWED_CT_SIZE + 1)
            if np.array_equal(pixels[top + rows.start:top + rows.stop, columns], want)]


def test_render_draws_each_box_on_its_window(study, tmp_path) -> None:
    folder, ct = study
    assert_each_box_on_its_window(render_command(folder / "sr_en.dcm", tmp_path / "ct.png", None), ct)


def test_render_asks_for_the_windows_an_older_sr_does_not_name(study, tmp_path) -> None:
    """An SR written before windows were recorded: ``render`` asks the lookup (the CLI's findings
    database) for the window of each region by Tracking UID."""
    folder, ct = study
    content = _content(ct, "en")
    plain = dataclasses.replace(content, regions=[dataclasses.replace(r, window=None) for r in content.regions])
    write_dataset(build_sr(plain), folder / "sr_en.dcm")
    assert {r.window for r in read_report(pydicom.dcmread(folder / "sr_en.dcm")).regions} == {None}
    window_of = {r.tracking_uid: str(r.window) for r in content.regions}
    asked: list[list[str]] = []

    def lookup(tracking_uids):
        asked.append(sorted(tracking_uids))
        return {uid: window_of[uid] for uid in tracking_uids}

    out = render_command(folder / "sr_en.dcm", tmp_path / "ct.png", None, window_lookup=lookup)
    assert asked == [sorted(window_of)]
    assert_each_box_on_its_window(out, ct)


def assert_each_box_on_its_window(out: Path, ct: Dataset) -> None:
    """The English SR's picture: each box's inside is prepare_image's picture for its window, on a
    panel of its own, and its outline is on that panel only."""
    pixels = np.asarray(Image.open(out).convert("RGB"))
    yellow = np.all(pixels == np.array(COLOURS["en"], dtype=np.uint8), axis=-1)
    tops = {}
    for window, box in WINDOW_BOXES.items():
        found = _panel_tops(pixels, _picture(ct, window), box)
        assert len(found) == 1, (window, found)  # one panel shows this box's inside as the model saw it
        tops[window] = found[0]  # (the premise test shows the header window differs there)
    assert tops["lung"] != tops["mediastinum"]
    for window, box in WINDOW_BOXES.items():
        x1, y1, x2, y2 = (int(v) for v in box)
        for panel_window, top in tops.items():
            # the box's right edge is drawn on its own panel only
            edge = yellow[top + y1 + 5:top + y2 - 5, x2 - 1:x2 + 2].any(axis=1)
            assert edge.all() if panel_window == window else not edge.any(), (window, panel_window)


def _linear_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) to 8 bits, as a viewer applies a Softcopy VOI LUT."""
    scaled = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8)


def test_one_presentation_state_per_window(study, tmp_path) -> None:
    folder, ct = study
    contents = [_content(ct, language) for language in ("en", "zh")]
    planned = plan_presentation_states(contents, {str(ct.SOPInstanceUID): ct})
    assert planned.skipped == [] and len(planned.datasets) == len(WINDOWS)
    assert len({str(ps.SOPInstanceUID) for ps in planned.datasets}) == len(WINDOWS)
    hu = ct.pixel_array.astype(np.float64) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    seen = set()
    for index, ps in enumerate(planned.datasets):
        voi = ps.SoftcopyVOILUTSequence[0]
        window = next(w for w, preset in CT_PRESETS.items()
                      if preset == (float(voi.WindowCenter), float(voi.WindowWidth)) and w in WINDOWS)
        seen.add(window)
        assert voi.VOILUTFunction == "LINEAR"
        assert voi.WindowCenterWidthExplanation == f"MEDREGA CT {window.upper()}"
        # the annotations draw this window's box (once per language layer) and no other
        boxes = {tuple(float(v) for v in graphic.GraphicData)
                 for annotation in ps.GraphicAnnotationSequence
                 for graphic in annotation.GraphicObjectSequence}
        x1, y1, x2, y2 = WINDOW_BOXES[window]
        assert boxes == {(x1, y1, x2, y1, x2, y2, x1, y2, x1, y1)}
        assert len(ps.GraphicAnnotationSequence) == 2  # English and Chinese layers
        # the state's VOI shows the box on the pixels the model saw
        rows, columns = inside(WINDOW_BOXES[window])
        shown = _linear_window(hu, float(voi.WindowCenter), float(voi.WindowWidth))
        model = _picture(ct, window)[..., 0]
        assert np.abs(shown[rows, columns].astype(int) - model[rows, columns]).max() <= 1
        path = write_dataset(ps, tmp_path / f"ps_{index}.dcm")
        errors, warnings = validate(path)
        assert errors == [], errors
        assert unexplained(warnings) == []
        # and so does DCMTK's renderer of the image through the state
        out = tmp_path / f"ps_{index}.pgm"
        run = subprocess.run([require_tool("dcmp2pgm"), "-p", str(path), str(folder / "ct.dcm"), str(out)],
                             capture_output=True, text=True, timeout=60, env=peer_env())
        assert run.returncode == 0, run.stdout + run.stderr
        dcmtk = np.array(Image.open(out))
        assert np.abs(dcmtk[rows, columns].astype(int) - model[rows, columns]).max() <= 1
    assert seen == set(WINDOWS)
