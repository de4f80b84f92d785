"""Writing an evaluation: ``metrics.json`` and ``index.html`` under ``--out``, and the lines the
command prints."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .page import render_page
from .runner import EvaluationResult
from .summary import compare

__all__ = ["METRICS_FILE", "PAGE_FILE", "comparison_of", "write_outputs", "summary_lines"]

METRICS_FILE = "metrics.json"
PAGE_FILE = "index.html"


def _label(key: tuple[str, str, str, str]) -> str:
    task, language, modality, subset = key
    return " / ".join(v for v in (task, language, "all modalities" if modality == "*" else modality, subset) if v)


def comparison_of(before: Mapping[str, Any], after: Mapping[str, Any], against: str) -> dict[str, Any]:
    """The comparison section of metrics.json: each shared metric, which moved beyond the
    earlier run's 95 % interval, and what only one run has."""
    movements, only = compare(before, after)
    rows = [
        {
            "group": _label(m.group), "metric": m.metric, "before": m.before, "before_ci": list(m.before_ci),
            "after": m.after, "after_ci": list(m.after_ci), "moved": m.moved, "direction": m.direction,
        }
        for m in movements
    ]
    return {
        "against": against,
        "earlier_model": before.get("model"),
        "earlier_plans": before.get("plans"),
        "rows": rows,
        "moved": [r for r in rows if r["moved"]],
        "only_in_one": only,
    }


def _clean(value: Any) -> Any:
    """NaN (an interval a resample could not give) as null: metrics.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_outputs(result: EvaluationResult, out: Path, compare_with: Path | None = None) -> dict[str, Any]:
    """Write metrics.json and index.html into ``out``; return the metrics document."""
    out.mkdir(parents=True, exist_ok=True)
    document = result.as_json()
    if compare_with is not None:
        before = json.loads(compare_with.read_text(encoding="utf-8"))
        document["comparison"] = comparison_of(before, document, str(compare_with))
    document = _clean(document)
    (out / METRICS_FILE).write_text(json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8")
    (out / PAGE_FILE).write_text(render_page(document, document.get("comparison")), encoding="utf-8")
    return document


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """What the command prints: one line per group and metric, then what was not scored."""
    lines = [
        f"model: {document['model']['name']} ({document['model']['weights_id']})",
        f"plans: {document['plans']['sha256']} (layout {document['plans']['layout']})",
        f"cases: {document['dataset']['scored']} scored, {document['dataset']['skipped']} not scored",
    ]
    lines.extend(document.get("notes", []))
    for g in document["groups"]:
        head = _label((g["task"], g["language"], g["modality"], g.get("subset", "")))
        lines.append(f"{head} ({g['n']} case{'' if g['n'] == 1 else 's'})")
        for name, m in g["metrics"].items():
            ci = m["ci"]
            interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci[0] is not None else "[n/a]"
            lines.append(f"  {name:<14} {m['value']:.4f}  95% {interval}  n={m['n']}")
    for s in document.get("skipped", []):
        lines.append(f"not scored: line {s['line']} ({s['id']}): {s['kind']}: {s['reason']}")
    comparison = document.get("comparison")
    if comparison:
        lines.append(f"compared with {comparison['against']}: {len(comparison['moved'])} metric(s) moved beyond the earlier interval")
        for r in comparison["moved"]:
            lines.append(f"  moved {r['direction']}: {r['group']} {r['metric']} {r['before']:.4f} -> {r['after']:.4f} "
                         f"(earlier 95% [{r['before_ci'][0]:.4f}, {r['before_ci'][1]:.4f}])")
        for o in comparison["only_in_one"]:
            lines.append(f"  {o}")
    return lines
