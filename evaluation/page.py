"""The evaluation's HTML page: one self-contained file (inline CSS and SVG, no external URL),
readable offline on a hospital workstation.

Plots are SVG drawn from the numbers of ``metrics.json``: an IoU histogram per detection group
(bins of 0.1; the dashed lines mark 0.25 / 0.5 / 0.75) and a bar per class of each
classification group's per-class F1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jinja2 import Environment, select_autoescape

__all__ = ["render_page", "iou_histogram_svg", "class_f1_svg"]

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def iou_histogram_svg(ious: Sequence[float], width: int = 420, height: int = 180) -> str:
    """Counts of IoU values in ten bins over [0, 1] as an SVG bar chart."""
    counts, _ = np.histogram(np.clip(np.asarray(ious, dtype=float), 0, 1), bins=10, range=(0.0, 1.0))
    top = max(int(counts.max()) if len(counts) else 0, 1)
    left, bottom, plot_w, plot_h = 36, height - 24, width - 48, height - 40
    bar_w = plot_w / 10
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="IoU histogram, {len(ious)} values">']
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    for i, c in enumerate(counts):
        h = plot_h * int(c) / top
        x = left + i * bar_w
        parts.append(f'<rect x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#4a78b5">'
                     f'<title>IoU {i / 10:.1f}-{(i + 1) / 10:.1f}: {int(c)}</title></rect>')
        if c:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{bottom - h - 3:.1f}" font-size="10" text-anchor="middle">{int(c)}</text>')
    for t in (0.25, 0.5, 0.75):
        x = left + t * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{bottom - plot_h}" x2="{x:.1f}" y2="{bottom}" stroke="#b54a4a" stroke-dasharray="4 3"/>')
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left + v * plot_w:.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{v:.1f}</text>')
    parts.append(f'<text x="4" y="{bottom - plot_h + 8}" font-size="10">{top}</text>')
    parts.append("</svg>")
    return "".join(parts)


def class_f1_svg(per_class: Mapping[str, float], width: int = 520) -> str:
    """Horizontal bars of F1 (0-1) per class."""
    items = list(per_class.items())
    row, label_w = 18, 200
    height = row * len(items) + 24
    plot_w = width - label_w - 50
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="F1 per class">']
    for i, (name, f1) in enumerate(items):
        y = 4 + i * row
        w = plot_w * max(0.0, min(1.0, f1))
        parts.append(_ENV.from_string(
            '<text x="{{ lx }}" y="{{ ty }}" font-size="11" text-anchor="end">{{ name }}</text>'
        ).render(lx=label_w - 6, ty=y + 12, name=name[:34]))
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="#4a9a6a"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="10">{f1:.2f}</text>')
    parts.append(f'<line x1="{label_w}" y1="0" x2="{label_w}" y2="{height - 20}" stroke="#333"/>')
    parts.append(f'<text x="{label_w}" y="{height - 6}" font-size="10">0</text>'
                 f'<text x="{label_w + plot_w}" y="{height - 6}" font-size="10" text-anchor="end">1</text>')
    parts.append("</svg>")
    return "".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>MedRegA evaluation {{ run.finished_at }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff4d6; padding: 6px 10px; border-left: 4px solid #d9a400; }
.moved { background: #fde2e2; }
h2 { margin-top: 28px; border-bottom: 1px solid #ddd; }
small { color: #666; }
</style></head><body>
<h1>MedRegA evaluation</h1>
<p class="warn">Results of {{ run.model.name }} on this site's labelled cases. They describe these cases only;
{% if run.model.backend != "medrega" %}<strong>this run used the {{ run.model.backend }} backend, not MedRegA</strong>; {% endif %}
AI-generated answers remain unverified.</p>
<table>
<tr><th>model</th><td>{{ run.model.name }} ({{ run.model.backend }}, {{ run.model.version }})</td></tr>
<tr><th>weights</th><td><code>{{ run.model.weights_id }}</code></td></tr>
<tr><th>plans</th><td><code>{{ run.plans.sha256 }}</code> ({{ run.plans.path }}, layout {{ run.plans.layout }})</td></tr>
<tr><th>dataset</th><td>{{ run.dataset.path }}: {{ run.dataset.cases }} case lines, {{ run.dataset.scored }} scored,
 {{ run.dataset.skipped }} not scored (<code>{{ run.dataset.cases_sha256 }}</code>)</td></tr>
<tr><th>time</th><td>{{ run.started_at }} to {{ run.finished_at }} ({{ "%.1f"|format(run.duration_s) }} s)</td></tr>
{% for note in run.notes or [] %}<tr><th>note</th><td>{{ note }}</td></tr>{% endfor %}
<tr><th>intervals</th><td>95 % percentile bootstrap over cases, {{ run.bootstrap.resamples }} resamples</td></tr>
</table>
{% if comparison %}
<h2>Compared with {{ comparison.against }}</h2>
<p>{{ comparison.moved|length }} metric(s) moved beyond the earlier run's 95 % interval.</p>
<table><tr><th>group</th><th>metric</th><th>earlier</th><th>earlier interval</th><th>now</th><th></th></tr>
{% for m in comparison.rows %}<tr{% if m.moved %} class="moved"{% endif %}><td>{{ m.group }}</td><td>{{ m.metric }}</td>
<td class="num">{{ "%.4f"|format(m.before) }}</td><td class="num">{{ "%.4f"|format(m.before_ci[0]) }}-{{ "%.4f"|format(m.before_ci[1]) }}</td>
<td class="num">{{ "%.4f"|format(m.after) }}</td><td>{% if m.moved %}moved {{ m.direction }}{% endif %}</td></tr>
{% endfor %}</table>
{% endif %}
{% for g in groups %}
<h2>{{ g.task }} · {{ g.language }} · {{ "all modalities" if g.modality == "*" else g.modality }}{% if g.subset %} · {{ g.subset }}{% endif %} <small>({{ g.n }} case{{ "s" if g.n != 1 }})</small></h2>
<table><tr><th>metric</th><th>value</th><th>95 % interval</th><th>cases</th></tr>
{% for name, m in g.metrics.items() %}<tr><td>{{ name }}</td><td class="num">{{ "%.4f"|format(m.value) }}</td>
<td class="num">{{ fmt_ci(m.ci) }}</td><td class="num">{{ m.n }}</td></tr>{% endfor %}
</table>
{% if g.svg_iou %}<p>IoU of each case (one reference box) or assigned pair (several), n = {{ g.ious|length }}:</p>{{ g.svg_iou|safe }}{% endif %}
{% if g.svg_f1 %}<p>F1 per class:</p>{{ g.svg_f1|safe }}{% endif %}
{% endfor %}
{% if skipped %}
<h2>Not scored ({{ skipped|length }})</h2>
<table><tr><th>line</th><th>case</th><th>why</th><th>reason</th></tr>
{% for s in skipped %}<tr><td class="num">{{ s.line }}</td><td>{{ s.id }}</td><td>{{ s.kind }}</td><td>{{ s.reason }}</td></tr>{% endfor %}
</table>
{% endif %}
<h2>How to read this page</h2>
<p>Each section is one task in one language, for one modality or all together. The value is
computed as MedRegA's evaluation computes it (docs/evaluation.md); the interval is where the
value would fall in 95 % of resamples of these cases: a narrow interval needs many cases. A
second run differs meaningfully from this one when its value lies outside this interval.
Cases under "Not scored" were not counted: the line was invalid, the image could not be read,
production's image selection would not send it to the model, or MedRegA was never trained to
answer what the case asks.</p>
</body></html>
"""


def _fmt_ci(ci: Sequence[float | None]) -> str:
    if any(v is None or math.isnan(v) for v in ci):
        return "n/a"
    return f"{ci[0]:.4f}-{ci[1]:.4f}"


def render_page(run: Mapping[str, Any], comparison: Mapping[str, Any] | None = None) -> str:
    """The HTML page of one ``metrics.json`` document (and its comparison, if any)."""
    groups = []
    for g in run["groups"]:
        view = dict(g)
        view["svg_iou"] = iou_histogram_svg(g["ious"]) if g["task"] in ("detection", "grounded_report") and g["ious"] else ""
        view["svg_f1"] = class_f1_svg(g["per_class_f1"]) if g.get("per_class_f1") else ""
        groups.append(view)
    template = _ENV.from_string(_PAGE)
    return template.render(run=run, groups=groups, skipped=run.get("skipped", []), comparison=comparison, fmt_ci=_fmt_ci)
