"""A picture of an SR: its boxes and labels drawn over the referenced images (PNG).

For people checking results without a DICOM viewer (``medrega-gateway render SR_FILE
--out PNG``). Each image (and frame, and CT window) that carries regions becomes one panel,
rendered with the window its boxes were found on (named in the SR's TID 4019 Algorithm
Parameters, see :mod:`sr_writer.report`) and captioned with it; panels are
stacked vertically under a header naming the document title, so the picture also says
that the result is AI-generated and unverified. Boxes are drawn in the colour of their
language's presentation-state layer (English yellow, Chinese cyan); labels use a CJK font
so Chinese renders intact. Labels of the same boxes from SRs in other languages
(matched by Tracking UID) are added under the box.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.imaging import CT_PRESETS, ImagingError, prepare_image

from common.settings import CJK_FONT_ENV

from .errors import FontNotFoundError, NotConvertibleError, RenderError, SourceImageNotFoundError
from .readback import ReadRegion, ReadReport, read_report

__all__ = [
    "CJK_FONT_CANDIDATES",
    "FONT_ENV",
    "find_cjk_font",
    "render_sr",
    "render_command",
    "find_dicom_files",
    "source_picture",
    "window_caption",
]

#: Environment variable naming a font file to use instead of the lookup.
FONT_ENV = CJK_FONT_ENV

#: Known locations of fonts that cover Chinese (Debian/Ubuntu, Fedora, macOS, Windows).
CJK_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:\\Windows\\Fonts\\msyh.ttc",
    "C:\\Windows\\Fonts\\simhei.ttf",
)

#: Box colours per language, the RGB of the presentation-state layers' CIELab colours.
COLOURS = {"en": (255, 230, 0), "zh": (0, 230, 255)}
_OTHER = (255, 128, 255)
_MIN_SIDE = 512
_MAX_SIDE = 1600


def find_cjk_font(candidates: Sequence[str] = CJK_FONT_CANDIDATES) -> Path:
    """Path of a font that can draw Chinese: ``$MEDREGA_CJK_FONT``, else the first candidate found.

    Raises :class:`FontNotFoundError` naming what was tried and how to install one.
    """
    override = os.environ.get(FONT_ENV)
    if override:
        if Path(override).is_file():
            return Path(override)
        raise FontNotFoundError(f"{FONT_ENV}={override} is not a file")
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FontNotFoundError(
        "no font for Chinese text found; install one (Debian/Ubuntu: apt-get install "
        f"fonts-wqy-zenhei) or set {FONT_ENV} to a .ttf/.ttc file. Tried: " + ", ".join(candidates)
    )


@dataclass(frozen=True)
class _Panel:
    sop_instance_uid: str
    frame: int | None
    #: The CT window the panel's boxes were found on (None: the header's or default window).
    window: str | None
    regions: tuple[ReadRegion, ...]


def window_caption(window: str) -> str:
    """How a panel names its CT window: ``lung window (C -600 / W 1500)``, from CT_PRESETS."""
    center, width = CT_PRESETS[window]
    return f"{window.replace('_', ' ')} window (C {center:g} / W {width:g})"


def source_picture(dataset: Dataset, frame: int | None, window: str | None = None) -> np.ndarray:
    """The picture of one frame as 8-bit RGB, exactly as the model saw it: the one rendering
    (:func:`model.imaging.prepare_image`: Modality LUT, VOI LUT or window, MONOCHROME1
    polarity, colour conversion), with the CT ``window`` the boxes were found on, so the boxes
    are drawn on the pixels they were found on."""
    try:
        return np.asarray(prepare_image(dataset, frame, window).rgb)
    except ImagingError as exc:  # the message says which image
        raise RenderError(f"cannot render the pixels of {dataset.get('SOPInstanceUID', '?')}: {exc}") from exc


def _label(region: ReadRegion) -> str:
    return region.finding[2]


def _panels(report: ReadReport, windows: Mapping[str, str]) -> list[_Panel]:
    """One panel per image, frame and CT window: a box is drawn only on the window it was found
    on (a chest CT slice with lung-window and mediastinal-window boxes gives two panels).
    ``windows`` (Tracking UID -> window) names the window of regions the SR names none for."""
    grouped: dict[tuple[str, int | None, str | None], list[ReadRegion]] = {}
    for region in report.regions:
        frame = region.frame_numbers[0] if region.frame_numbers else None
        window = region.window or windows.get(region.tracking_uid)
        grouped.setdefault((region.referenced_sop_instance_uid, frame, window), []).append(region)
    return [_Panel(uid, frame, window, tuple(regions)) for (uid, frame, window), regions in grouped.items()]


def _draw_panel(
    image: np.ndarray,
    panel: _Panel,
    language: str,
    companions: Mapping[str, list[tuple[str, str]]],
    font: ImageFont.FreeTypeFont,
) -> Image.Image:
    rows, columns = image.shape[:2]
    scale = max(1.0, _MIN_SIDE / max(rows, columns))
    scale = min(scale, _MAX_SIDE / max(rows, columns)) if max(rows, columns) * scale > _MAX_SIDE else scale
    canvas = Image.fromarray(image, "RGB").resize(
        (max(1, round(columns * scale)), max(1, round(rows * scale))), Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(canvas)
    colour = COLOURS.get(language, _OTHER)
    width = max(2, round(canvas.width / 300))
    for region in panel.regions:
        points = [(x * scale, y * scale) for x, y in region.points]
        draw.line(points, fill=colour, width=width)
        x1, y1, _, y2 = (v * scale for v in region.box)
        lines = [(_label(region), colour)]
        lines += [(text, COLOURS.get(lang, _OTHER)) for lang, text in companions.get(region.tracking_uid, [])]
        y = max(0.0, y1 - (font.size + 4))
        for index, (text, text_colour) in enumerate(lines):
            top = y if index == 0 else y2 + 2 + (index - 1) * (font.size + 4)
            left, upper, right, lower = draw.textbbox((x1 + 2, top), text, font=font)
            draw.rectangle((left - 2, upper - 2, right + 2, lower + 2), fill=(0, 0, 0))
            draw.text((x1 + 2, top), text, font=font, fill=text_colour)
    return canvas


def _header(lines: Iterable[str], width: int, font: ImageFont.FreeTypeFont) -> Image.Image:
    lines = list(lines)
    height = 8 + len(lines) * (int(font.size) + 6)
    header = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(header)
    for index, line in enumerate(lines):
        draw.text((8, 4 + index * (font.size + 6)), line, font=font, fill=(255, 255, 255))
    return header


def render_sr(
    sr_path: str | os.PathLike[str],
    source_paths_by_sop_uid: Mapping[str, str | os.PathLike[str]],
    out_png: str | os.PathLike[str],
    *,
    companion_sr_paths: Sequence[str | os.PathLike[str]] = (),
    windows: Mapping[str, str] | None = None,
) -> Path:
    """Draw the SR's boxes and labels over its referenced images; write a PNG.

    ``source_paths_by_sop_uid``: image files by SOP Instance UID (those the regions use).
    ``companion_sr_paths``: SRs of the same results in other languages; their labels are
    added to the boxes with the same Tracking UID.
    ``windows``: CT window by Tracking UID, for regions whose SR names none (SRs written before
    the window was recorded; the CLI looks them up in the findings database).
    Raises :class:`SourceImageNotFoundError`, :class:`FontNotFoundError`,
    :class:`RenderError` (no coordinates: e.g. a Basic Text SR, or undecodable pixels).
    """
    font_path = find_cjk_font()
    dataset = pydicom.dcmread(sr_path)
    try:
        report = read_report(dataset)
    except NotConvertibleError as exc:
        raise RenderError(f"{sr_path} has no region coordinates to draw: {exc}") from exc
    language = report.language[0] if report.language else "en"
    companions: dict[str, list[tuple[str, str]]] = {}
    for path in companion_sr_paths:
        other = read_report(pydicom.dcmread(path))
        other_language = other.language[0] if other.language else "?"
        for region in other.regions:
            companions.setdefault(region.tracking_uid, []).append((other_language, _label(region)))

    panels = _panels(report, windows or {})
    unknown = sorted({p.window for p in panels if p.window is not None} - set(CT_PRESETS))
    if unknown:
        raise RenderError(f"unknown CT window {unknown[0]!r}; known: {sorted(CT_PRESETS)}")
    missing = sorted({p.sop_instance_uid for p in panels} - set(source_paths_by_sop_uid))
    if missing:
        raise SourceImageNotFoundError(f"source images not found for SOP Instance UIDs: {', '.join(missing)}")
    font = ImageFont.truetype(str(font_path), size=18)
    images = []
    for panel in panels:
        source = pydicom.dcmread(source_paths_by_sop_uid[panel.sop_instance_uid])
        pixels = source_picture(source, panel.frame, panel.window)
        canvas = _draw_panel(pixels, panel, language, companions, font)
        frame = f" frame {panel.frame}" if panel.frame else ""
        window = f" | {window_caption(panel.window)}" if panel.window else ""
        caption = f"{source.get('Modality', '')}{frame}{window} | image {panel.sop_instance_uid}"
        images.append((caption, canvas))
    width = max([canvas.width for _, canvas in images] + [640])
    blocks = [
        _header(
            [report.title[2], f"{dataset.get('SeriesDescription', '')} | {len(report.regions)} regions"],
            width,
            font,
        )
    ]
    if not images:
        blocks.append(_header(["No regions in this document." if language == "en" else "本文档没有区域。"], width, font))
    for caption, canvas in images:
        blocks.append(_header([caption], width, font))
        blocks.append(canvas)
    picture = Image.new("RGB", (width, sum(b.height for b in blocks)), (0, 0, 0))
    top = 0
    for block in blocks:
        picture.paste(block, (0, top))
        top += block.height
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, format="PNG")
    return out


def find_dicom_files(folders: Iterable[Path], *, recursive: Iterable[bool]) -> dict[str, tuple[Path, Dataset]]:
    """Headers (SOP and study UIDs, class) of DICOM files in ``folders``, by SOP Instance UID."""
    found: dict[str, tuple[Path, Dataset]] = {}
    tags = ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "Modality"]
    for folder, deep in zip(folders, recursive):
        if not folder.is_dir():
            continue
        paths = folder.rglob("*") if deep else folder.iterdir()
        for path in sorted(paths):
            if not path.is_file():
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            except (InvalidDicomError, OSError, EOFError):  # not DICOM, unreadable or cut short: not a candidate
                continue
            uid = header.get("SOPInstanceUID")
            if uid and str(uid) not in found:
                found[str(uid)] = (path, header)
    return found


def render_command(sr_file: Path, out: Path, spool_dir: Path | None = None,
                   window_lookup: Callable[[Sequence[str]], Mapping[str, str]] | None = None) -> Path:
    """``medrega-gateway render SR_FILE --out PNG``: find the images and draw the SR.

    Source images are looked up by SOP Instance UID among the files next to ``sr_file``
    and, if given, anywhere under ``spool_dir``. SRs found there for the same study whose
    regions share Tracking UIDs with ``sr_file`` (the other language) add their labels.
    ``window_lookup`` is asked for the CT window of the regions (by Tracking UID) whose SR
    names none: the window of the model run that found them, from the findings database.
    """
    sr_file = Path(sr_file)
    if not sr_file.is_file():
        raise RenderError(f"{sr_file} does not exist")
    folders = [sr_file.parent] + ([Path(spool_dir)] if spool_dir is not None else [])
    found = find_dicom_files(folders, recursive=[False, True])
    sources = {uid: path for uid, (path, _) in found.items()}
    dataset = pydicom.dcmread(sr_file)
    try:
        own = read_report(dataset)
    except NotConvertibleError:
        return render_sr(sr_file, sources, out, companion_sr_paths=[])  # no regions: no companion
    unnamed = [r.tracking_uid for r in own.regions if r.window is None]
    windows = dict(window_lookup(unnamed)) if window_lookup is not None and unnamed else {}
    tracking = {r.tracking_uid for r in own.regions}
    companions: list[Path] = []
    for uid, (path, header) in found.items():
        if not tracking or uid == dataset.SOPInstanceUID or header.get("Modality") != "SR":
            continue
        if header.get("StudyInstanceUID") != dataset.StudyInstanceUID:
            continue
        try:
            other = read_report(pydicom.dcmread(path))
        except (NotConvertibleError, ValueError):
            continue
        if other.language != own.language and tracking & {r.tracking_uid for r in other.regions}:
            companions.append(path)
    return render_sr(sr_file, sources, out, companion_sr_paths=companions, windows=windows)
