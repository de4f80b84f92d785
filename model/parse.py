"""MedRegA answers -> text and grounded regions.

MedRegA writes regions as ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` with integers
0-999 relative to the whole image; with special tokens skipped (its ``chat()`` output) the same
answer reads ``label[[x1, y1, x2, y2]]``, which MedRegA's own evaluation also accepts. The text
after a region (or after a group of regions separated only by commas) up to the next region is
that region's description, e.g. ``<ref>right lung</ref><box>[[...]]</box>, <ref>left
lung</ref><box>[[...]]</box>: No focal consolidation...``.

:func:`parse_answer` never raises. It accepts full-width brackets and commas, Chinese
punctuation, missing closing tags, several boxes per label, several labels; it clamps values to
0-999, orders each box's corners and drops duplicate boxes. Markup it cannot read stays in
``text`` and sets ``unparsed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Box", "Region", "ParsedAnswer", "parse_answer"]

COORD_MAX = 999


@dataclass(frozen=True)
class Box:
    """A box in MedRegA's 0-999 coordinates (x to the right, y down), x1 <= x2, y1 <= y2."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def normalised(cls, values: list[float]) -> "Box":
        v = [min(COORD_MAX, max(0, int(round(x)))) for x in values]
        return cls(min(v[0], v[2]), min(v[1], v[3]), max(v[0], v[2]), max(v[1], v[3]))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass(frozen=True)
class Region:
    label: str
    boxes: list[Box] = field(default_factory=list)
    description: str | None = None


@dataclass(frozen=True)
class ParsedAnswer:
    text: str
    regions: list[Region]
    unparsed: bool


_NUM = r"\s*[-+]?\d+(?:\.\d+)?\s*"
_SEP = r"[,，、]"
_LB, _RB = r"[\[［]", r"[\]］]"
_BOX = _LB + _NUM + _SEP + _NUM + _SEP + _NUM + _SEP + _NUM + _RB
_BOXLIST = _LB + r"\s*" + _BOX + r"(?:\s*" + _SEP + r"?\s*" + _BOX + r")*\s*" + _RB
_BOXES = r"(?:(?:<box>\s*)?" + _BOXLIST + r"|<box>\s*" + _BOX + r")(?:\s*</box>)?"
_TOKEN = re.compile(
    r"(?P<ref><ref>(?P<label>[^<\[［\n]*)(?:</ref>)?)(?P<refboxes>\s*" + _BOXES + r")?"
    r"|(?P<boxes>" + _BOXES + r")"
)
_ONE_BOX = re.compile(_BOX)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
#: Text that joins regions of one group ("A, B: description").
_JOINER = re.compile(r"^[\s,，、;；]*(?:(?:and|和|及|与)[\s,，、]*)?$")
#: Where a tag-stripped label starts: after the last of these in the preceding text.
_LABEL_BREAK = re.compile(r".*[,，、;；:：.。!?！？\n]", re.S)
_LEADING = re.compile(r"^[\s:：,，、;；.。-]+")
_LEFTOVER = re.compile(r"</?ref>|</?box>|[\[［]\s*[\[［]|[\]］]\s*[\]］]")


def _boxes(fragment: str) -> list[Box]:
    out: list[Box] = []
    for m in _ONE_BOX.finditer(fragment):
        box = Box.normalised([float(n) for n in _NUMBER.findall(m.group(0))])
        if box not in out:
            out.append(box)
    return out


def parse_answer(text: str) -> ParsedAnswer:
    """Split a raw answer into plain text and regions (see the module docstring)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    pieces: list[str | dict] = []  # text, or {"label", "boxes"} for a region
    pos = 0
    for m in _TOKEN.finditer(text):
        pieces.append(text[pos : m.start()])
        pos = m.end()
        if m.group("ref") is not None:
            label = m.group("label").strip()
            if m.group("refboxes"):
                pieces.append({"label": label, "boxes": _boxes(m.group("refboxes"))})
            else:
                pieces.append(label)  # a <ref> without a box is just words
        else:
            boxes = _boxes(m.group("boxes"))
            before = pieces[-1] if isinstance(pieces[-1], str) else ""
            head_match = _LABEL_BREAK.match(before)
            head = head_match.group(0) if head_match else ""
            tail = before[len(head) :]
            head += tail[: len(tail) - len(tail.lstrip())]  # the space before a label is text
            label = tail.strip()
            if not label and len(pieces) >= 2 and isinstance(pieces[-2], dict) and _JOINER.match(before):
                label = pieces[-2]["label"]  # more boxes for the previous label
            if label:
                pieces[-1] = head
            pieces.append({"label": label, "boxes": boxes})
    pieces.append(text[pos:])

    # Plain text: regions read as their labels.
    plain = "".join(p if isinstance(p, str) else p["label"] for p in pieces)
    plain = re.sub(r"[ \t]{2,}", " ", plain).strip()
    leftovers = "".join(p for p in pieces if isinstance(p, str))
    unparsed = bool(_LEFTOVER.search(leftovers))

    # Descriptions: the text after a group of regions, up to the next region.
    regions: list[Region] = []
    group: list[dict] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, dict):
            group.append(piece)
            continue
        if not group:
            continue
        follows_region = i + 1 < len(pieces)  # text pieces alternate with regions
        if follows_region and _JOINER.match(piece):
            continue
        description = _LEADING.sub("", piece).strip() or None
        regions.extend(_merge(group, description, regions))
        group = []
    if group:
        regions.extend(_merge(group, None, regions))
    return ParsedAnswer(text=plain, regions=regions, unparsed=unparsed)


def _merge(group: list[dict], description: str | None, done: list[Region]) -> list[Region]:
    out: list[Region] = []
    for item in group:
        if not item["boxes"]:
            continue
        region = Region(label=item["label"], boxes=item["boxes"], description=description)
        if region not in done and region not in out:
            out.append(region)
    return out
