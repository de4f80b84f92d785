"""Draw the model's boxes on the referenced image: a PNG rendered on the server with Pillow.

The image is the spool copy of the received instance (``data_dir / Instance.path``), rendered by
:func:`model.imaging.prepare_image`, the one DICOM-to-display function: the auditor sees the
pixels the model saw (Modality LUT, VOI LUT or window, MONOCHROME1 polarity, colour conversion,
PS3.4 N.2), with the CT window of the model run that found each box (``ModelRun.window``): boxes
found on different windows are drawn on separate, labelled panels. Small images are enlarged so
labels stay readable.
Labels are drawn in both languages with a CJK font (Debian's fonts-wqy-zenhei).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pydicom
from PIL import Image, ImageDraw, ImageFont

from model.imaging import ImagingError, PreparedImage, prepare_image
from sr_writer.errors import FontNotFoundError
from sr_writer.render import find_cjk_font, window_caption

from .regions import Region

__all__ = ["ImageNotAvailableError", "resolve_spool_path", "display_picture", "render_annotated_png"]

log = logging.getLogger(__name__)

#: Images are enlarged until their longer side has at least this many pixels.
MIN_LONG_SIDE = 512
#: And shrunk to at most this many (a browser view, not the original resolution).
MAX_LONG_SIDE = 1600
#: Pixels between the panels of an image whose boxes were found on several windows.
PANEL_GAP = 8
#: Size of the text naming a panel's window, and the padding of its band (pixels).
CAPTION_FONT_SIZE = 18
CAPTION_PADDING = 6
_COLOURS = ["#ff5252", "#40c4ff", "#69f0ae", "#ffd740", "#e040fb", "#ffab40", "#b2ff59", "#18ffff"]


class ImageNotAvailableError(Exception):
    """The instance's spool file is missing, outside the spool, or has no decodable pixels."""


def resolve_spool_path(data_dir: Path, relative: str) -> Path:
    """``data_dir / relative``, refusing anything that resolves outside ``data_dir``."""
    root = data_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ImageNotAvailableError("the instance's path lies outside the data folder")
    if not path.is_file():
        raise ImageNotAvailableError("the instance's spool file is missing")
    return path


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The CJK font of :func:`sr_writer.render.find_cjk_font` (the one lookup: ``render`` and the
    pages draw with the same font), or Pillow's default with a warning when none is installed."""
    try:
        return ImageFont.truetype(str(find_cjk_font()), size)
    except FontNotFoundError as exc:
        log.warning("%s: Chinese labels will not render", exc)
        return ImageFont.load_default(size)


def display_picture(ds: pydicom.Dataset, frame_number: int | None, window: str | None = None) -> Image.Image:
    """Frame ``frame_number`` (1-based) of ``ds`` as the model saw it (RGB, source size), with the
    CT ``window`` preset the model's input was rendered with (None: the image's own window)."""
    return _prepared(ds, frame_number, window).rgb


def _prepared(ds: pydicom.Dataset, frame_number: int | None, window: str | None) -> PreparedImage:
    try:
        return prepare_image(ds, frame_number, window)
    except ImagingError as exc:
        raise ImageNotAvailableError(f"the image cannot be shown: {exc}") from None


def _scaled(image: Image.Image) -> tuple[Image.Image, float]:
    """The picture enlarged or shrunk for reading (MIN_LONG_SIDE..MAX_LONG_SIDE), and the factor."""
    width, height = image.size
    long_side = max(width, height)
    scale = 1.0
    if long_side < MIN_LONG_SIDE:
        scale = MIN_LONG_SIDE / long_side
    elif long_side > MAX_LONG_SIDE:
        scale = MAX_LONG_SIDE / long_side
    if scale != 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.BILINEAR)
    return image, scale


def _draw_regions(image: Image.Image, scale: float, regions: Sequence[Region], languages: Sequence[str]) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(max(12, image.size[0] // 40))
    line_width = max(2, image.size[0] // 300)
    for region in regions:
        if not region.box_px:
            continue
        colour = _COLOURS[(region.number - 1) % len(_COLOURS)]
        x1, y1, x2, y2 = (v * scale for v in region.box_px)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line_width)
        names = [region.label(lang) for lang in languages if region.label(lang)]
        caption = f"{region.number} " + " / ".join(names)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tx = min(max(0.0, x1), max(0.0, image.size[0] - (right - left) - 4))
        ty = y1 - (bottom - top) - 6 if y1 - (bottom - top) - 6 >= 0 else y2 + 2
        draw.rectangle([tx, ty, tx + (right - left) + 4, ty + (bottom - top) + 6], fill="#000000")
        draw.text((tx + 2, ty + 1 - top), caption, fill=colour, font=font)


def _caption(text: str, width: int) -> Image.Image:
    """A dark band naming a panel's window, as wide as the panel."""
    font = _font(CAPTION_FONT_SIZE)
    band = Image.new("RGB", (width, CAPTION_FONT_SIZE + 2 * CAPTION_PADDING), (32, 32, 32))
    ImageDraw.Draw(band).text((CAPTION_PADDING, CAPTION_PADDING), text, fill="#ffffff", font=font)
    return band


def render_annotated_png(
    path: Path,
    regions: Sequence[Region],
    *,
    frame_number: int | None = None,
    languages: Sequence[str] = ("en", "zh"),
) -> bytes:
    """The image at ``path`` with each region's box, number and labels drawn on it.

    Each box is drawn on the picture it was found on: the CT window of its model run
    (``Region.window``). Regions of one window (or of none: the image's own window) give one
    picture, as before; regions found on several windows (a chest CT slice read on the lung and
    the mediastinal window) give one panel per window side by side, in the order of the regions,
    each under a band naming its window with the preset's centre and width, as a radiologist
    hangs the two windows of one slice next to each other. A picture with a preset window is
    always captioned, so nobody takes a lung-window picture for the default one.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ImageNotAvailableError(f"the spool file is not readable DICOM: {exc}") from None
    boxed = [r for r in regions if r.box_px]
    windows = list(dict.fromkeys(r.window for r in boxed)) or [None]
    captioned = windows != [None]
    panels: list[Image.Image] = []
    for window in windows:
        prepared = _prepared(ds, frame_number, window)
        image, scale = _scaled(prepared.rgb)
        _draw_regions(image, scale, [r for r in boxed if r.window == window], languages)
        if captioned:
            text = window_caption(window) if window else f"image window: {prepared.voi}"
            band = _caption(text, image.width)
            panel = Image.new("RGB", (image.width, band.height + image.height), (0, 0, 0))
            panel.paste(band, (0, 0))
            panel.paste(image, (0, band.height))
            image = panel
        panels.append(image)
    if len(panels) == 1:
        picture = panels[0]
    else:
        picture = Image.new("RGB", (sum(p.width for p in panels) + PANEL_GAP * (len(panels) - 1),
                                    max(p.height for p in panels)), (0, 0, 0))
        left = 0
        for panel in panels:
            picture.paste(panel, (left, 0))
            left += panel.width + PANEL_GAP
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()
