"""Classification answers -> one of the trained options (coded by :func:`sr_writer.coding.coded_option`).

MedRegA's classification sets list their options in the instruction (:mod:`model.training`).
The model answers in free text; MedRegA's evaluation (``src/eval/``) maps an answer to the
option with the highest BLEU-1 against it before scoring accuracy and macro-F1. :func:`map_answer`
is that mapping, the one used by the worker and by the evaluation (issue 15).

BLEU-1 here is Papineni et al.'s modified unigram precision of the answer against one option,
times the brevity penalty ``exp(1 - r/c)`` when the answer (``c`` tokens) is shorter than the
option (``r`` tokens); tokens are lower-cased words (``\\w+``, so "Pleural Effusion." and
"pleural effusion" are equal). Ties go to the option listed first; an answer sharing no word
with any option maps to nothing.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["MappedOption", "bleu1", "map_answer", "option_name_zh", "OPTION_NAMES_PATH"]

OPTION_NAMES_PATH = Path(__file__).with_name("option_names.csv")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class MappedOption:
    """The option an answer was mapped to, and the BLEU-1 that chose it."""

    option: str
    score: float
    #: True when the answer, tokenized, is exactly the option (no mapping was needed).
    exact: bool


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def bleu1(candidate: str, reference: str) -> float:
    """BLEU-1 of ``candidate`` against the single ``reference`` (see the module docstring)."""
    hyp, ref = _tokens(candidate), _tokens(reference)
    if not hyp or not ref:
        return 0.0
    ref_counts = Counter(ref)
    clipped = sum(min(n, ref_counts[w]) for w, n in Counter(hyp).items())
    precision = clipped / len(hyp)
    penalty = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return precision * penalty


def map_answer(answer: str, options: Sequence[str]) -> MappedOption | None:
    """The option ``answer`` means (highest BLEU-1, first listed on a tie), or None."""
    best: MappedOption | None = None
    answer_tokens = _tokens(answer)
    for option in options:
        score = bleu1(answer, option)
        if score > 0 and (best is None or score > best.score):
            best = MappedOption(option, score, answer_tokens == _tokens(option))
    return best


@lru_cache(maxsize=1)
def _zh_names() -> dict[str, str]:
    lines = [line for line in OPTION_NAMES_PATH.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return {row["option"].casefold(): row["zh"] for row in csv.DictReader(lines)}


def option_name_zh(option: str) -> str | None:
    """The Chinese name of a trained option, or None when ``option_names.csv`` lacks it."""
    return _zh_names().get(option.casefold())
