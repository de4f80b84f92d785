"""render_sr / render_command: a PNG with the boxes and bilingual labels over the image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont

from sr_writer import render
from sr_writer.errors import FontNotFoundError, RenderError, SourceImageNotFoundError
from sr_writer.fallback import to_basic_text_sr
from sr_writer.io import write_dataset
from sr_writer.readback import read_report
from sr_writer.render import COLOURS, find_cjk_font, render_command, render_sr


def _count(png: Path, colour: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB"))
    return int(np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1).sum())


def _ct_source(study: Path) -> dict[str, Path]:
    path = study / "CT_0.dcm"
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path}


@pytest.fixture
def study(built, tmp_path) -> Path:
    """The CT study as PACS would leave it: images and both SRs in one folder."""
    folder = tmp_path / "study"
    folder.mkdir()
    for path in built["CT"].sample.paths:
        shutil.copy(path, folder / path.name)
    for language in ("en", "zh"):
        shutil.copy(built["CT"].paths[("regions", language)], folder / f"sr_{language}.dcm")
    return folder


def test_the_font_draws_chinese() -> None:
    font = ImageFont.truetype(str(find_cjk_font()), 32)

    def glyph(text: str) -> bytes:
        image = Image.new("L", (80, 40))
        ImageDraw.Draw(image).text((0, 0), text, font=font, fill=255)
        return image.tobytes()

    # a font without Chinese draws the same "missing glyph" box for both
    assert glyph("右肺") != glyph("左肺")
    assert any(glyph("右肺"))


def test_render_command_draws_both_languages(study, tmp_path) -> None:
    out = render_command(study / "sr_zh.dcm", tmp_path / "out" / "ct.png", None)
    image = Image.open(out)
    assert image.format == "PNG" and image.width >= 512 and image.height > 512
    assert _count(out, COLOURS["zh"]) > 500  # box outlines and labels in the zh colour
    assert _count(out, COLOURS["en"]) > 100  # English labels from the companion SR
    alone = render_sr(study / "sr_zh.dcm", _ct_source(study), tmp_path / "alone.png")
    assert _count(alone, COLOURS["en"]) == 0  # no companion given: Chinese only
    again = render_command(study / "sr_zh.dcm", tmp_path / "again.png", None)
    assert again.read_bytes() == out.read_bytes()


def test_boxes_are_where_the_sr_says(study, tmp_path) -> None:
    out = render_sr(study / "sr_en.dcm", _ct_source(study), tmp_path / "en.png")
    pixels = np.asarray(Image.open(out).convert("RGB"))
    yellow = np.all(pixels == np.array(COLOURS["en"], dtype=np.uint8), axis=-1)
    region = read_report(pydicom.dcmread(study / "sr_en.dcm")).regions[1]  # left lung
    scale = 512 / 128  # the 128 x 128 CT is drawn at 512 x 512
    x1, y1, x2, y2 = (round(v * scale) for v in region.box)
    panel_top = pixels.shape[0] - 512  # the image panel is the last block
    column = yellow[panel_top:, x2 - 1 : x2 + 2].any(axis=1)  # right edge of the box
    assert column[y1 + 5 : y2 - 5].all()
    assert not yellow[panel_top + (y1 + y2) // 2, (x1 + x2) // 2]  # the inside stays the image


def test_sources_are_found_in_the_spool(built, tmp_path) -> None:
    sr_folder = tmp_path / "results"
    sr_folder.mkdir()
    sr = shutil.copy(built["US"].paths[("regions", "en")], sr_folder / "sr.dcm")
    spool = tmp_path / "spool" / "study" / "series"
    spool.mkdir(parents=True)
    for path in built["US"].sample.paths:
        shutil.copy(path, spool / path.name)
    (spool / "notes.txt").write_text("not DICOM")
    with pytest.raises(SourceImageNotFoundError, match="source images not found"):
        render_command(Path(sr), tmp_path / "x.png", None)
    out = render_command(Path(sr), tmp_path / "us.png", tmp_path / "spool")
    assert Image.open(out).height > 3 * 400  # three panels: frames 1 and 30, and the RGB image


def test_document_without_regions_renders_a_notice(built, tmp_path) -> None:
    out = render_sr(built["MR"].paths[("empty", "zh")], {}, tmp_path / "empty.png")
    assert Image.open(out).height < 200


def test_basic_text_sr_has_nothing_to_draw(built, tmp_path) -> None:
    basic = write_dataset(to_basic_text_sr(pydicom.dcmread(built["CT"].paths[("regions", "en")])), tmp_path / "b.dcm")
    with pytest.raises(RenderError, match="no region coordinates"):
        render_sr(basic, {}, tmp_path / "b.png")


def test_missing_font_is_a_clear_error(monkeypatch, built, tmp_path) -> None:
    monkeypatch.delenv(render.FONT_ENV, raising=False)
    with pytest.raises(FontNotFoundError, match="fonts-wqy-zenhei"):
        find_cjk_font(["/nonexistent/font.ttc"])
    monkeypatch.setenv(render.FONT_ENV, str(tmp_path / "missing.ttf"))
    with pytest.raises(FontNotFoundError, match=render.FONT_ENV):
        render_sr(built["CT"].paths[("regions", "en")], {}, tmp_path / "x.png")
    monkeypatch.setenv(render.FONT_ENV, render.CJK_FONT_CANDIDATES[0])
    assert find_cjk_font() == Path(render.CJK_FONT_CANDIDATES[0])


def test_missing_sr_file(tmp_path) -> None:
    with pytest.raises(RenderError, match="does not exist"):
        render_command(tmp_path / "none.dcm", tmp_path / "x.png", None)
