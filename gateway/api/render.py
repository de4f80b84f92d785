"""Draw the model's boxes on the referenced image: a PNG rendered on the server with Pillow.

The image is the spool copy of the received instance (``data_dir / Instance.path``), rendered by
:func:`model.imaging.prepare_image`, the one DICOM-to-display function: the auditor sees the
pixels the model saw (Modality LUT, VOI LUT or window, MONOCHROME1 polarity, colour conversion,
PS3.4 N.2). Small images are enlarged so labels stay readable.
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

from model.imaging import ImagingError, prepare_image
from sr_writer.errors import FontNotFoundError
from sr_writer.render import find_cjk_font

from .regions import Region

__all__ = ["ImageNotAvailableError", "resolve_spool_path", "display_picture", "render_annotated_png"]

log = logging.getLogger(__name__)

#: Images are enlarged until their longer side has at least this many pixels.
MIN_LONG_SIDE = 512
#: And shrunk to at most this many (a browser view, not the original resolution).
MAX_LONG_SIDE = 1600
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


def display_picture(ds: pydicom.Dataset, frame_number: int | None) -> Image.Image:
    """Frame ``frame_number`` (1-based) of ``ds`` as the model saw it (RGB, source size)."""
    try:
        return prepare_image(ds, frame_number).rgb
    except ImagingError as exc:
        raise ImageNotAvailableError(f"the image cannot be shown: {exc}") from None


def render_annotated_png(
    path: Path,
    regions: Sequence[Region],
    *,
    frame_number: int | None = None,
    languages: Sequence[str] = ("en", "zh"),
) -> bytes:
    """The image at ``path`` with each region's box, number and labels drawn on it."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ImageNotAvailableError(f"the spool file is not readable DICOM: {exc}") from None
    image = display_picture(ds, frame_number)
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
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
