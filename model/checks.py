"""Checks on a model answer before it becomes a finding.

* Truncation: a greedy answer that reached ``max_new_tokens`` without ``<|im_end|>`` was cut off;
  the backend says so (:class:`model.backends.base.GeneratedAnswer`), the run row records it and
  the SR gets Completion Flag PARTIAL and a note.
* De-identification blanks: MIMIC-CXR's reports, on which MedRegA learnt to write reports, have
  dates, names and times replaced by ``___``; the model reproduces them ("Dr. ___ was paged at
  ___"). A sentence holding one says nothing about this patient's images.
* Prior studies: MIMIC-style reports compare with earlier studies ("In comparison with the study
  of ___", "compared to prior", "unchanged"); the model was never given a prior study, so such a
  sentence is not an observation.

:func:`screen_text` takes such sentences out of a report text and returns them with the reason;
the worker records them (``model_runs.flags``) and the SR lists them in a note, not as findings.
Section headings ("Findings:", "Impression:", "影像诊断：", "影像结论：") are kept with what
remains of their section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEID_BLANK", "PRIOR_STUDY", "Removed", "Screened", "screen_text"]

DEID_BLANK = "deid_blank"
PRIOR_STUDY = "prior_study"

_BLANK = re.compile(r"_{2,}")
_PRIOR = re.compile(
    r"\b(?:in comparison (?:with|to)|compared (?:with|to)|comparison (?:is made )?(?:with|to)|"
    r"(?:prior|previous|earlier|preceding|last) (?:study|studies|exam|examination|radiograph|film|image|ct|mri?|scan)s?|"
    r"since (?:the )?(?:prior|previous|last|recent)|interval (?:change|increase|decrease|improvement|worsening|"
    r"development|resolution|placement|removal)|(?:little|no) (?:overall |significant |interval )?change|unchanged|"
    r"as (?:before|previously))\b"
    r"|较前|与前片|与前次|前片|前次检查|复查对比|较上次|对比前",
    re.IGNORECASE,
)
_HEADING = re.compile(r"(?P<h>(?:findings|impression|indication|comparison|影像诊断|影像结论|影像所见|诊断意见)\s*[:：])",
                      re.IGNORECASE)
#: Sentence ends: Latin punctuation before a blank (not "3.5 cm", not "Dr. ___"), CJK punctuation,
#: line breaks.
_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])|\n+")
_ABBREVIATION = re.compile(r"(?:\b(?:dr|mr|mrs|ms|st|vs|approx|no|e\.g|i\.e|fig)\.)$", re.IGNORECASE)


def _sentences(body: str) -> list[str]:
    out: list[str] = []
    start = 0
    for match in _END.finditer(body):
        piece = body[start : match.start()]
        if _ABBREVIATION.search(piece):
            continue
        out.append(piece)
        start = match.end()
    out.append(body[start:])
    return [p for p in out if p.strip()]


@dataclass(frozen=True)
class Removed:
    sentence: str
    reason: str


@dataclass(frozen=True)
class Screened:
    """A text with its unusable sentences taken out."""

    text: str
    removed: tuple[Removed, ...]


def _why(sentence: str) -> str | None:
    if _PRIOR.search(sentence):
        return PRIOR_STUDY
    if _BLANK.search(sentence):
        return DEID_BLANK
    return None


def _screen_section(body: str, removed: list[Removed]) -> str:
    kept: list[str] = []
    for sentence in _sentences(body):
        reason = _why(sentence)
        if reason is None:
            kept.append(sentence.strip())
        else:
            removed.append(Removed(sentence.strip(), reason))
    cjk = any("\u4e00" <= ch <= "\u9fff" for ch in body)
    return ("" if cjk else " ").join(kept)


def screen_text(text: str) -> Screened:
    """``text`` without its sentences that hold a de-identification blank or cite a prior study."""
    removed: list[Removed] = []
    parts = _HEADING.split(text)
    # parts: [before first heading, heading, body, heading, body, ...]
    out: list[str] = []
    lead = _screen_section(parts[0], removed)
    if lead:
        out.append(lead)
    for heading, body in zip(parts[1::2], parts[2::2]):
        kept = _screen_section(body, removed)
        if kept:
            cjk = any("\u4e00" <= ch <= "\u9fff" for ch in heading)
            out.append(heading + ("" if cjk else " ") + kept)
    if not removed:
        return Screened(text, ())
    joiner = "\n" if "\n" in text else ("" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else " ")
    return Screened(joiner.join(out), tuple(removed))
