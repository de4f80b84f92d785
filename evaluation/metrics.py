"""MedRegA's evaluation metrics, defined as its evaluation scripts (``src/eval/`` of
xmed-lab/MedRegA) define them, computed with the libraries those scripts use or their
well-kept equivalents.

Each task has a per-case score (:func:`score_report`, :func:`score_detection`,
:func:`score_region_to_text`, and the classification pair) and an aggregation over a group of
cases (:func:`aggregate`), which :func:`bootstrap_ci` re-runs on resampled cases. Where MedRegA
pools a corpus (English BLEU) the per-case score keeps the corpus statistics, so a resample is
aggregated exactly as the whole set is.

Definitions (MedRegA's, with its names):

* **detection, one reference box** (``SingleRegionSingleObjectEvaluator``): boxes in pixels
  (value / 999 x columns or rows); the IoU of the first predicted box with the reference box, or,
  when the answer has more boxes than the reference, the best IoU of any predicted box with it;
  no box read: IoU 0. ``acc@0.25/0.5/0.75`` = share of cases with IoU **>** the threshold,
  ``iou`` = mean IoU.
* **detection, several reference boxes** (``MultiRegionMultiObjectEvaluator``): one-to-one
  assignment of predicted to reference boxes maximising total IoU (Hungarian,
  :func:`scipy.optimize.linear_sum_assignment` on 1 - IoU); a pair with IoU **>=** 0.5 is a
  match. Per case ``box_precision`` = matches / reference boxes, ``box_recall`` = matches /
  predicted boxes (MedRegA's naming: its "precision" divides by the reference), ``box_f1`` their
  harmonic mean; each averaged over cases. ``box_iou`` = the IoU of every assigned pair (matched
  or not) summed over all cases / all reference boxes.
* **report, English** (``ReportEvaluator``): both texts normalised as MedRegA's ``cleanStr``
  (:func:`clean_report_en`); BLEU-1 and BLEU-4 over the whole corpus (sacrebleu, 13a tokens, no
  smoothing: HF ``evaluate``'s ``bleu``); ROUGE-1 and ROUGE-L F-measure (rouge-score, no
  stemming) and METEOR (nltk, WordNet) per case, averaged.
* **report, Chinese** (``ReportEvaluatorChinese``): the answer normalised as ``cleanStr_zh``
  (:func:`clean_report_zh`) without spaces, the reference as given; both cut into words by
  jieba; BLEU-1/4, ROUGE-1/L and METEOR per case on those words, averaged.
* **classification** (``ClassificationEvaluator``, multiclass): the answer mapped to one option
  by BLEU-1 (:func:`model.classification.map_answer`, the mapping the worker uses); macro-F1 and
  accuracy (scikit-learn) over the cases.
* **region to text** (``R2TEvaluator``): lower-cased texts, box lists removed from the answer,
  word sets (whitespace; jieba words for Chinese); per case precision/recall/F1 of the answer's
  words against the reference's and sentence BLEU-1; ``accuracy`` = share of cases whose recall
  is >= 0.75; each averaged.

Where this differs from MedRegA's scripts, on purpose, it says so in docs/evaluation.md (two
bugs of the Chinese report script are not reproduced; ROUGE is the plain mean, not
``evaluate``'s bootstrap median).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from model.geometry import box_to_pixels, iou

__all__ = [
    "IOU_THRESHOLDS",
    "MATCH_IOU",
    "R2T_RECALL",
    "MetricUnavailable",
    "CaseScore",
    "clean_report_en",
    "clean_report_zh",
    "words_zh",
    "score_report",
    "score_detection",
    "score_region_to_text",
    "score_classification",
    "aggregate",
    "bootstrap_ci",
]

#: Accuracy thresholds of text-to-region detection (IoU strictly above).
IOU_THRESHOLDS = (0.25, 0.5, 0.75)
#: IoU from which an assigned pair of boxes is a match (several boxes).
MATCH_IOU = 0.5
#: Region-to-text: an answer is accurate when it holds this share of the reference's words.
R2T_RECALL = 0.75

Box = tuple[float, float, float, float]
#: sacrebleu's sufficient statistics of one case: matches and totals per n-gram order, lengths.
BleuStats = tuple[list[int], list[int], int, int]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed on this machine (e.g. METEOR without WordNet)."""


@dataclass
class CaseScore:
    """One case's contribution to its task's metrics (what :func:`aggregate` pools)."""

    task: str
    language: str
    #: Per-case values averaged over cases (name -> value).
    values: dict[str, float] = field(default_factory=dict)
    #: Sufficient statistics pooled over cases (English corpus BLEU, detection box_iou).
    pooled: dict[str, Any] = field(default_factory=dict)
    #: Classification: (reference option index, predicted option index).
    label_pair: tuple[int, int] | None = None
    #: Detection: IoUs for the histogram (single box: the case IoU; several: assigned pairs).
    ious: list[float] = field(default_factory=list)


# -- text normalisation -----------------------------------------------------------------------
_EN_SPLIT = re.compile(r"[,:.\n]")
_SPACES = re.compile(r"\s+")


def clean_report_en(text: str) -> str:
    """MedRegA's ``cleanStr``: lower case, cut at ``, : .`` and newlines, drop empty pieces and
    pieces holding ``_`` (MIMIC's de-identification blanks), join with ``.``, one space."""
    pieces = [p.strip() for p in _EN_SPLIT.split(text.lower())]
    joined = ".".join(p for p in pieces if p and "_" not in p)
    return _SPACES.sub(" ", joined).strip()


_BRACKETED = re.compile(r"\[.*?\]")
_NUMBERING = re.compile(r"\d+\.")


def clean_report_zh(text: str) -> str:
    """MedRegA's ``cleanStr_zh``: bracketed spans and ``-`` removed, lines numbered ``1.``
    un-numbered, stripped, empty lines dropped, the lines joined with ``，``."""
    text = _BRACKETED.sub("", text).replace("[", " ").replace("]", "").replace("-", "")
    lines = [_NUMBERING.sub("", line).strip() for line in text.lower().split("\n")]
    joined = "，".join(line for line in lines if line)
    return joined.replace("：，", "：").replace("。，", "，")


def words_zh(text: str) -> list[str]:
    """Chinese words (jieba's default cut), whitespace tokens dropped."""
    return [w for w in _jieba().cut(text) if w.strip()]


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # not its dictionary-loading chatter on every run
    return jieba


# -- library objects, made once ---------------------------------------------------------------
@lru_cache(maxsize=2)
def _bleu(order: int) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=order, smooth_method="none", tokenize="13a")


def _bleu_from_stats(stats: Sequence[BleuStats], order: int) -> float:
    """BLEU (0-1) from summed (matches per order, totals per order, hyp length, ref length)."""
    from sacrebleu.metrics import BLEU

    counts = [sum(s[0][n] for s in stats) for n in range(order)]
    totals = [sum(s[1][n] for s in stats) for n in range(order)]
    sys_len, ref_len = sum(s[2] for s in stats), sum(s[3] for s in stats)
    if sys_len == 0:
        return 0.0
    return BLEU.compute_bleu(counts, totals, sys_len, ref_len, smooth_method="none", max_ngram_order=order).score / 100


def _bleu_stats(hypothesis: str, reference: str, order: int) -> BleuStats:
    s = _bleu(order).corpus_score([hypothesis], [[reference]])
    return (list(s.counts), list(s.totals), int(s.sys_len), int(s.ref_len))


@lru_cache(maxsize=1)
def _rouge_en() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


class _WhitespaceTokenizer:
    """rouge-score tokenizer for text already cut into words (Chinese, by jieba)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@lru_cache(maxsize=1)
def _rouge_words() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=_WhitespaceTokenizer())


def _meteor(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    from nltk.translate.meteor_score import meteor_score

    from .wordnet import load_wordnet

    return float(meteor_score([list(reference)], list(hypothesis), wordnet=load_wordnet()))


def _words_en(text: str) -> list[str]:
    """nltk's ``word_tokenize`` on one line (no sentence splitting: the cleaned text has no
    sentence break that Punkt would split, see :func:`clean_report_en`)."""
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize(text)


# -- per-case scores --------------------------------------------------------------------------
def score_report(answer_text: str, reference: str, language: str, *, meteor: bool = True) -> CaseScore:
    """One report (or the text of a grounded report) against its reference."""
    score = CaseScore("report", language)
    if language == "en":
        hyp, ref = clean_report_en(answer_text), clean_report_en(reference)
        score.pooled["bleu1"] = _bleu_stats(hyp, ref, 1)
        score.pooled["bleu4"] = _bleu_stats(hyp, ref, 4)
        r = _rouge_en().score(ref, hyp)
        hyp_words, ref_words = _words_en(hyp), _words_en(ref)
    else:
        hyp_words = words_zh(clean_report_zh(answer_text).replace(" ", ""))
        ref_words = words_zh(reference)
        hyp, ref = " ".join(hyp_words), " ".join(ref_words)
        score.values["bleu1"] = _bleu_from_stats([_bleu_stats(hyp, ref, 1)], 1)
        score.values["bleu4"] = _bleu_from_stats([_bleu_stats(hyp, ref, 4)], 4)
        r = _rouge_words().score(ref, hyp)
    score.values["rouge1"] = r["rouge1"].fmeasure
    score.values["rougeL"] = r["rougeL"].fmeasure
    if meteor:
        score.values["meteor"] = _meteor(ref_words, hyp_words)
    return score


def _pixels(boxes: Sequence[Sequence[int]], rows: int, columns: int) -> list[Box]:
    return [box_to_pixels(b, rows, columns) for b in boxes]


def score_detection(
    predicted: Sequence[Sequence[int]], reference: Sequence[Sequence[int]], rows: int, columns: int
) -> CaseScore:
    """Predicted boxes (0-999, in answer order) against the reference boxes (0-999).

    One reference box: the single-region score; several: the one-to-one matching score (see the
    module docstring).
    """
    from scipy.optimize import linear_sum_assignment

    if not reference:
        raise ValueError("a detection case needs at least one reference box")
    pred, ref = _pixels(predicted, rows, columns), _pixels(reference, rows, columns)
    score = CaseScore("detection", "")
    if len(ref) == 1:
        if not pred:
            best = 0.0
        elif len(pred) > len(ref):
            best = max(iou(p, ref[0]) for p in pred)
        else:
            best = iou(pred[0], ref[0])
        score.values["iou"] = best
        for t in IOU_THRESHOLDS:
            score.values[f"acc@{t}"] = float(best > t)
        score.ious = [best]
        return score
    matrix = np.array([[iou(p, r) for r in ref] for p in pred], dtype=np.float64).reshape(len(pred), len(ref))
    rows_i, cols_i = linear_sum_assignment(1.0 - matrix) if pred else (np.array([], int), np.array([], int))
    assigned = [float(matrix[r, c]) for r, c in zip(rows_i, cols_i)]
    matches = sum(1 for v in assigned if v >= MATCH_IOU)
    precision = matches / len(ref)
    recall = matches / len(pred) if pred else 0.0
    score.values["box_precision"] = precision
    score.values["box_recall"] = recall
    score.values["box_f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    score.pooled["box_iou"] = (sum(assigned), len(ref))
    score.ious = assigned
    return score


def score_region_to_text(answer_text: str, reference: str, language: str) -> CaseScore:
    """A region description against its reference (MedRegA's ``R2TEvaluator``)."""
    from nltk.translate.bleu_score import sentence_bleu

    answer = _BOX_LIST.sub("", answer_text.lower())
    ref = reference.lower()
    if language == "zh":
        hyp_tokens, ref_tokens = words_zh(answer), words_zh(ref)
    else:
        hyp_tokens, ref_tokens = answer.split(), ref.split()
    hyp_set, ref_set = set(hyp_tokens), set(ref_tokens)
    common = len(hyp_set & ref_set)
    precision = common / len(hyp_set) if hyp_set else 0.0
    recall = common / len(ref_set) if ref_set else 0.0
    score = CaseScore("region_to_text", language)
    score.values["f1"] = 2 * precision * recall / (precision + recall + 1e-8)
    score.values["recall"] = recall
    score.values["accuracy"] = float(recall >= R2T_RECALL)
    if hyp_tokens and ref_tokens:
        import warnings

        with warnings.catch_warnings():  # nltk warns when no unigram matches (BLEU 0)
            warnings.simplefilter("ignore")
            score.values["bleu1"] = float(sentence_bleu([ref_tokens], hyp_tokens, weights=(1.0,)))
    else:
        score.values["bleu1"] = 0.0
    return score


_BOX_LIST = re.compile(r"\[\[.*?\]\]")


def score_classification(reference_index: int, predicted_index: int, language: str) -> CaseScore:
    score = CaseScore("classification", language)
    score.label_pair = (reference_index, predicted_index)
    score.values["accuracy"] = float(reference_index == predicted_index)
    return score


# -- aggregation ------------------------------------------------------------------------------
def _mean(scores: Sequence[CaseScore], key: str) -> float | None:
    values = [s.values[key] for s in scores if key in s.values]
    return float(sum(values) / len(values)) if values else None


def aggregate(scores: Sequence[CaseScore]) -> dict[str, float]:
    """The metrics of one group of cases of one task (and language)."""
    out: dict[str, float] = {}
    if not scores:
        return out
    keys = sorted({k for s in scores for k in s.values})
    for key in keys:
        if key == "accuracy" and scores[0].task == "classification":
            continue
        value = _mean(scores, key)
        if value is not None:
            out[key] = value
    for order in (1, 4):
        stats = [s.pooled[f"bleu{order}"] for s in scores if f"bleu{order}" in s.pooled]
        if stats:
            out[f"bleu{order}"] = _bleu_from_stats(stats, order)
    pooled_iou = [s.pooled["box_iou"] for s in scores if "box_iou" in s.pooled]
    if pooled_iou:
        out["box_iou"] = sum(a for a, _ in pooled_iou) / sum(n for _, n in pooled_iou)
    pairs = [s.label_pair for s in scores if s.label_pair is not None]
    if pairs:
        from sklearn.metrics import accuracy_score, f1_score

        truth = [t for t, _ in pairs]
        pred = [p for _, p in pairs]
        out["macro_f1"] = float(f1_score(truth, pred, average="macro", zero_division=0))
        out["accuracy"] = float(accuracy_score(truth, pred))
    return out


def per_class_f1(pairs: Sequence[tuple[int, int]], options: Sequence[str]) -> dict[str, float]:
    """F1 of each option that occurs as reference or prediction (the page's per-class plot)."""
    from sklearn.metrics import f1_score

    labels = sorted({i for pair in pairs for i in pair})
    truth = [t for t, _ in pairs]
    pred = [p for _, p in pairs]
    values = f1_score(truth, pred, labels=labels, average=None, zero_division=0)
    return {options[i]: float(v) for i, v in zip(labels, values)}


def bootstrap_ci(
    scores: Sequence[CaseScore],
    metric: Callable[[Sequence[CaseScore]], Mapping[str, float]] = aggregate,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric of ``metric``: the cases are drawn with
    replacement ``resamples`` times and the group re-aggregated each time."""
    if not scores:
        return {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    n = len(scores)
    for _ in range(resamples):
        draw = [scores[i] for i in rng.integers(0, n, size=n)]
        for key, value in metric(draw).items():
            if not math.isnan(value):
                samples.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        key: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
        for key, v in samples.items()
    }
