"""Scored cases -> metric groups with bootstrap intervals; one run against another.

A group is the cases of one task and language, per modality and, when there are several, over
all modalities (``modality`` ``"*"``); classification groups are also split by the trained option list
(``subset``: the training set whose options were asked), since macro-F1 is defined over one
list of classes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .metrics import CaseScore, aggregate, bootstrap_ci, per_class_f1

__all__ = ["ScoredCase", "Group", "summarise", "compare", "Movement"]

ALL = "*"


@dataclass
class ScoredCase:
    """A case that was asked and scored."""

    case_id: str
    line: int
    task: str
    language: str
    modality: str
    #: Classification: the training set whose option list was asked; else "".
    subset: str
    prompt: str
    raw_answer: str
    #: What the answer was read as: the mapped option, the answer text, or the boxes.
    prediction: Any
    score: CaseScore
    options: tuple[str, ...] = ()


@dataclass
class Group:
    task: str
    language: str
    modality: str
    subset: str
    n: int
    metrics: dict[str, dict[str, Any]]
    ious: list[float]
    per_class_f1: dict[str, float]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.task, self.language, self.modality, self.subset)

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "language": self.language,
            "modality": self.modality,
            "subset": self.subset,
            "n": self.n,
            "metrics": self.metrics,
            "ious": self.ious,
            "per_class_f1": self.per_class_f1,
        }


def _metric_counts(scores: Sequence[CaseScore]) -> dict[str, int]:
    """How many cases each metric is computed over (detection mixes one- and several-box cases)."""
    counts: dict[str, int] = {}
    for s in scores:
        for key in list(s.values) + list(s.pooled):
            counts[key] = counts.get(key, 0) + 1
        if s.label_pair is not None:
            counts["macro_f1"] = counts.get("macro_f1", 0) + 1
    return counts


def summarise(cases: Sequence[ScoredCase], *, resamples: int = 1000, seed: int = 0) -> list[Group]:
    """Every group's metrics with 95 % percentile-bootstrap intervals."""
    by_set: "OrderedDict[tuple[str, str, str], list[ScoredCase]]" = OrderedDict()
    for c in sorted(cases, key=lambda c: (c.task, c.language, c.subset, c.modality, c.line)):
        by_set.setdefault((c.task, c.language, c.subset), []).append(c)
    buckets: "OrderedDict[tuple[str, str, str, str], list[ScoredCase]]" = OrderedDict()
    for (task, language, subset), members in by_set.items():
        modalities = sorted({m.modality for m in members})
        if len(modalities) > 1:  # all modalities together, then each
            buckets[(task, language, ALL, subset)] = members
        for modality in modalities:
            buckets[(task, language, modality, subset)] = [m for m in members if m.modality == modality]
    groups: list[Group] = []
    for (task, language, modality, subset), members in buckets.items():
        scores = [m.score for m in members]
        values = aggregate(scores)
        intervals = bootstrap_ci(scores, resamples=resamples, seed=seed)
        counts = _metric_counts(scores)
        metrics = {
            name: {
                "value": value,
                "ci": list(intervals.get(name, (math.nan, math.nan))),
                "n": counts.get(name, len(members)),
            }
            for name, value in sorted(values.items())
        }
        pairs = [s.label_pair for s in scores if s.label_pair is not None]
        per_class = per_class_f1(pairs, members[0].options) if pairs else {}
        ious = [v for s in scores for v in s.ious]
        groups.append(Group(task, language, modality, subset, len(members), metrics, ious, per_class))
    return groups


@dataclass(frozen=True)
class Movement:
    """One metric of one group in two runs."""

    group: tuple[str, str, str, str]
    metric: str
    before: float
    before_ci: tuple[float, float]
    after: float
    after_ci: tuple[float, float]

    @property
    def moved(self) -> bool:
        """The new value lies outside the earlier run's 95 % interval."""
        lo, hi = self.before_ci
        return not (lo <= self.after <= hi)

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down" if self.after < self.before else "same"


def _groups_of(metrics_json: Mapping[str, Any]) -> dict[tuple[str, str, str, str], Mapping[str, Any]]:
    return {
        (g["task"], g["language"], g["modality"], g.get("subset", "")): g["metrics"]
        for g in metrics_json.get("groups", [])
    }


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[list[Movement], list[str]]:
    """Every metric present in both runs, and the groups/metrics present in only one."""
    old, new = _groups_of(before), _groups_of(after)
    movements: list[Movement] = []
    only: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            only.append(f"{'/'.join(k for k in key if k)}: only in the {'earlier' if key in old else 'new'} run")
            continue
        for name in sorted(set(old[key]) | set(new[key])):
            if name not in old[key] or name not in new[key]:
                only.append(f"{'/'.join(k for k in key if k)} {name}: only in the {'earlier' if name in old[key] else 'new'} run")
                continue
            a, b = old[key][name], new[key][name]
            movements.append(
                Movement(key, name, float(a["value"]), (float(a["ci"][0]), float(a["ci"][1])),
                         float(b["value"]), (float(b["ci"][0]), float(b["ci"][1])))
            )
    return movements, only
