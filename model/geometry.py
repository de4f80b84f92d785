"""MedRegA box coordinates <-> source pixels, and matching one finding across languages.

MedRegA's boxes are integers 0-999 relative to the whole image (the picture is resized to
448x448 without padding). As MedRegA's own evaluation computes them: x pixels = value / 999 x
Columns, y pixels = value / 999 x Rows, here clipped to the image. Pixel coordinates follow
PS3.3 C.10.5.1.2 (Graphic Data, "PIXEL" units): the top left corner of the top left pixel is
(0, 0), x to the right (columns), y down (rows).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["box_to_pixels", "iou", "match_boxes"]

BoxTuple = tuple[float, float, float, float]


def box_to_pixels(box: Sequence[int], rows: int, columns: int) -> BoxTuple:
    """(x1, y1, x2, y2) in 0-999 -> source pixel coordinates, clipped to the image."""
    if rows <= 0 or columns <= 0:
        raise ValueError("rows and columns must be positive")
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))

    def clip(v: float, top: int) -> float:
        return min(float(top), max(0.0, v))

    return (
        clip(x1 / 999.0 * columns, columns),
        clip(y1 / 999.0 * rows, rows),
        clip(x2 / 999.0 * columns, columns),
        clip(y2 / 999.0 * rows, rows),
    )


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


def match_boxes(
    first: Sequence[Sequence[float]], second: Sequence[Sequence[float]], threshold: float = 0.5
) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) of boxes with IoU >= threshold, the best overlaps first."""
    candidates = sorted(
        ((iou(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for score, i, j in candidates:
        if score < threshold:
            break
        if i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return sorted(pairs)
