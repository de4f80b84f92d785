"""``medrega-gateway evaluate``: the configured model on a site's labelled cases (docs/evaluation.md).

The work is in :mod:`evaluation` (stage-independent); this command loads the backend, shows
progress, writes ``metrics.json`` and ``index.html``, prints the metrics and records the run in
the findings database and the audit log.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from common import db
from gateway.cli.base import app, fail, get_settings

__all__: list[str] = []


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Option("--dataset", help="folder holding cases.jsonl and the images",
                                          exists=True, file_okay=False, resolve_path=True)],
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json and index.html", resolve_path=True)],
    compare: Annotated[Optional[Path], typer.Option("--compare", help="metrics.json of an earlier run",
                                                    exists=True, dir_okay=False, resolve_path=True)] = None,
    resamples: Annotated[int, typer.Option(min=100, help="bootstrap resamples for the 95 % intervals")] = 1000,
) -> None:
    """Measure the configured model on a labelled set with MedRegA's own metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from evaluation.cases import CASES_FILE
    from evaluation.output import summary_lines, write_outputs
    from evaluation.records import record_evaluation
    from evaluation.runner import run_evaluation
    from model.backends import ModelLoadError, load_backend

    settings = get_settings(ctx)
    if not (dataset / CASES_FILE).is_file():
        fail(f"{dataset} has no {CASES_FILE}")
    earlier = None
    if compare is not None:
        try:
            earlier = json.loads(compare.read_text(encoding="utf-8"))
            earlier["groups"]
        except (ValueError, KeyError, TypeError):
            fail(f"--compare {compare}: not a metrics.json written by evaluate")
    try:
        db.check_schema_current(settings.database_url)
    except db.SchemaNotCurrentError as exc:
        fail(str(exc), code=3)
    try:
        backend = load_backend(settings.model)
    except ModelLoadError as exc:
        fail(f"cannot load the model: {exc}")
    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("cases"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("cases", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = run_evaluation(dataset, backend, settings.model, progress=progress, resamples=resamples)
    document = write_outputs(result, out, compare)
    for line in summary_lines(document):
        typer.echo(line)
    with db.session_scope(settings.database_url) as session:
        row = record_evaluation(session, document, actor=f"cli:{getpass.getuser()}", out_dir=str(out))
        session.flush()
        run_id = row.id
    typer.echo(f"evaluation run {run_id} recorded; {out / 'metrics.json'}, {out / 'index.html'}")
