"""The commands of ``medrega-gateway`` (registered on :data:`gateway.cli.app`)."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

from common import db
from gateway.cli.base import EXIT_MODEL, app, audited_change, ensure_schema, fail, get_settings
from common.settings import Settings
from model.convert import DEFAULT_MAX_SHARD_BYTES

__all__: list[str] = []

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
study_app = typer.Typer(help="Studies received by the node.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(study_app, name="study")


def _add_groups() -> None:
    from gateway.cli.admin import ae_app, dest_app, route_app
    from gateway.cli.deliveries import deliveries_app

    from gateway.cli.api import api_command, token_app
    from gateway.cli import evaluate  # noqa: F401  (defines `evaluate` on app)

    app.add_typer(ae_app, name="ae")
    app.add_typer(dest_app, name="dest")
    app.add_typer(route_app, name="route")
    app.add_typer(deliveries_app, name="deliveries")
    app.add_typer(token_app, name="token")
    app.command("api")(api_command)


_add_groups()


def _logging(settings: Settings, level: str | None = None) -> None:
    from common.logs import configure_logging

    configure_logging(level or settings.logging.level, settings.logging.format)


def _check_schema_and_plans(ctx: typer.Context, settings: Settings, create_if_empty: bool = False) -> None:
    """Refuse to start on a database that is behind, or on task plans that do not load
    (``create_if_empty``: an empty embedded database gets its schema, see :func:`ensure_schema`)."""
    from model.plans import PlanError, load_plans
    from model.prompts import PromptError

    ensure_schema(ctx, create_if_empty=create_if_empty)
    try:
        load_plans(settings.model.plans_path or None)
    except (PlanError, PromptError, OSError) as exc:
        message = str(exc)
        fail(message if message.startswith("model.plans_path") else f"model.plans_path: {message}", code=2)


def _check_model(settings: Settings) -> None:
    """Stop a command that would run the model when the model cannot be loaded (backend
    medrega: a missing, incomplete or unconverted checkpoint at model.path), with the how-to."""
    from gateway.status import check_model

    check = check_model(settings)
    if not check.ok:
        fail(f"model.path: {check.detail}", code=EXIT_MODEL)


def _ready(ctx: typer.Context, settings: Settings, create_if_empty: bool = False) -> None:
    """Start-up checks shared by long-running commands: schema current, config seeded."""
    from gateway.admin import seed_from_settings

    _check_schema_and_plans(ctx, settings, create_if_empty)
    with db.session_scope(settings.database_url) as session:
        for line in seed_from_settings(session, settings):
            logging.getLogger("gateway").info("seeded %s from the config file", line)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Validate the configuration and print it as the gateway sees it."""
    typer.echo(get_settings(ctx).model_dump_json(indent=2))


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest)."""
    settings = get_settings(ctx)
    db.upgrade(settings.database_url, revision)
    typer.echo(f"database at {db.current_revision(settings.database_url)}")


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: str = "-1") -> None:
    """Migrate the database down to ``revision`` (default: one step)."""
    settings = get_settings(ctx)
    db.downgrade(settings.database_url, revision)
    typer.echo(f"database at {db.current_revision(settings.database_url) or 'base (empty)'}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database's revision and the one this gateway needs."""
    settings = get_settings(ctx)
    typer.echo(f"current: {db.current_revision(settings.database_url)}  head: {db.head_revision()}")


@study_app.command("process")
def study_process(ctx: typer.Context, study_instance_uid: str) -> None:
    """Treat a study as complete now and queue a new version of its results."""
    from workflow.assembler import StudyNotFoundError, process_now
    from workflow.retention import ImagesPrunedError

    settings = get_settings(ctx)
    _ready(ctx, settings)
    with db.session_scope(settings.database_url) as session:
        try:
            job = process_now(session, study_instance_uid)
        except (StudyNotFoundError, ImagesPrunedError) as exc:
            fail(str(exc))
        if job is None:
            typer.echo("no job created: routing rules say this study is only stored, or it has no instances")
        else:
            typer.echo(f"job {job.id} created for version {job.study_version}; `serve` publishes it")


def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (the node and the dispatcher run in their own threads)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@app.command("serve")
def serve(
    ctx: typer.Context,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="do not run a worker in this process")] = False,
    log_level: Annotated[Optional[str], typer.Option(help="overrides logging.level")] = None,
) -> None:
    """Run the DICOM node and the dispatcher; with the embedded broker also a worker."""
    from dicom_node.scp import StorageSCP
    from workers.app import configure
    from workers.dispatcher import Dispatcher
    from workflow.outbox import recover_orphaned_work

    settings = get_settings(ctx)
    _logging(settings, log_level)
    if settings.embedded_broker and not no_worker:
        _check_model(settings)
    _ready(ctx, settings, create_if_empty=True)
    configure(settings)
    dispatcher = Dispatcher(settings)
    if settings.embedded_broker:
        with db.session_factory(settings.database_url)() as session:
            recover_orphaned_work(session, dispatcher.publish_job)
    scp = StorageSCP(settings)
    scp.start()
    if settings.node.metrics_port:
        from gateway.metrics import start_metrics_server

        start_metrics_server(settings.database_url, settings.node.metrics_port, settings.metrics_host)
    dispatcher.start()
    log = logging.getLogger("gateway")
    log.info("DICOM node %s listening on %s:%s", settings.node.ae_title, settings.node.host, scp.port)
    try:
        if settings.embedded_broker and not no_worker:
            from workers.embedded import make_worker

            make_worker(settings, loglevel=log_level or settings.logging.level).start()
        else:
            if not settings.embedded_broker:
                log.info("workers: separate `medrega-gateway worker` processes (broker %s)",
                         settings.broker_url.split("@")[-1])
            _wait_for_signal()
    finally:
        dispatcher.stop()
        scp.stop()


@app.command("worker")
def worker(
    ctx: typer.Context,
    queues: Annotated[Optional[str], typer.Option(help="comma-separated queues (default: this model's GPU queue and cpu)")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="e.g. 0,1: one worker process per GPU (CUDA_VISIBLE_DEVICES)")] = None,
    concurrency: int = 1,
    log_level: Annotated[Optional[str], typer.Option(help="overrides logging.level")] = None,
) -> None:
    """Run a Celery worker (a GPU host in production): loads the model once per process."""
    settings = get_settings(ctx)
    _logging(settings, log_level)
    _check_model(settings)
    _check_schema_and_plans(ctx, settings)
    if gpus:
        from workers.gpus import run_per_gpu

        args = [a for a in (f"--queues={queues}" if queues else None,
                            f"--log-level={log_level}" if log_level else None) if a]
        raise typer.Exit(run_per_gpu([g.strip() for g in gpus.split(",") if g.strip()], args,
                                     config=ctx.find_root().obj.config_path))
    from workers.embedded import make_worker

    qs = [q.strip() for q in queues.split(",")] if queues else None
    make_worker(settings, queues=qs, concurrency=concurrency,
                loglevel=log_level or settings.logging.level).start()


@app.command("demo")
def demo(
    keep: Annotated[Optional[Path], typer.Option(help="put the demo's files here instead of a new temporary folder")] = None,
    timeout_s: float = 300.0,
) -> None:
    """Run the whole path on embedded defaults: a PACS of its own sends a study and gets SRs back."""
    from gateway.demo.run import run_demo

    raise typer.Exit(run_demo(keep=keep, timeout_s=timeout_s))


jobs_app = typer.Typer(help="Jobs (one per study version): list, retry, cancel.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[Optional[str], typer.Option(
        help="only jobs in this state (e.g. dead, failed, delivery_failed)")] = None,
    limit: int = 50,
) -> None:
    """List the newest jobs with their state and last error."""
    from sqlalchemy import select

    from common.models import Job, JobState, Study

    settings = get_settings(ctx)
    with db.session_scope(settings.database_url) as session:
        query = select(Job, Study.study_instance_uid).join(Study).order_by(Job.id.desc()).limit(limit)
        if state:
            try:
                query = query.where(Job.state == JobState(state))
            except ValueError:
                fail(f"unknown state {state!r}; one of {', '.join(s.value for s in JobState)}")
        rows = session.execute(query).all()
        typer.echo(f"{'id':>6}  {'state':<11} {'ver':>3} {'tries':>5}  {'updated (UTC)':<19}  study / error")
        for job, uid in rows:
            updated = job.updated_at.strftime("%Y-%m-%d %H:%M:%S")
            typer.echo(f"{job.id:>6}  {job.state.value:<11} {job.study_version:>3} {job.attempts:>5}  {updated}  {uid}")
            if job.error:
                typer.echo(f"{'':>38}{job.error[:200]}")


def _job_action(ctx: typer.Context, job_id: int, verb: str) -> None:
    """``jobs retry`` and ``jobs cancel``: the rules of :mod:`workflow.jobs`, as in the API."""
    from workflow import jobs
    from workflow.states import TransitionError

    act = jobs.retry if verb == "retry" else jobs.cancel
    with audited_change(ctx, f"admin.job.{verb}", {"job_id": job_id}, (TransitionError,)) as session:
        act(session, job_id, "administrator (CLI)")
    typer.echo(f"job {job_id} {'retried' if verb == 'retry' else 'cancelled'}")


@jobs_app.command("retry")
def jobs_retry(ctx: typer.Context, job_id: int) -> None:
    """Put a dead, failed or cancelled job back in the queue (the dispatcher publishes it)."""
    _job_action(ctx, job_id, "retry")


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: int) -> None:
    """Cancel a job that no worker holds (pending, queued, failed or dead)."""
    _job_action(ctx, job_id, "cancel")


spool_app = typer.Typer(help="The spool of received instances: retention (storage.retention_days).",
                        no_args_is_help=True)
app.add_typer(spool_app, name="spool")


def _mb(n: int) -> str:
    return f"{n} bytes ({n / 1e6:.1f} MB)"


@spool_app.command("prune")
def spool_prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed; remove nothing")] = False,
) -> None:
    """Remove the images of studies delivered more than storage.retention_days ago (and the
    instances they replaced); quarantine after storage.quarantine_retention_days. `serve` does
    the same every hour. The studies' rows, findings and SRs stay."""
    from sqlalchemy.orm import Session

    from workflow.retention import PruneReport, prune_spool

    settings = get_settings(ctx)
    ensure_schema(ctx)
    storage = settings.storage

    def run(session: Session) -> PruneReport:
        return prune_spool(session, settings.data_dir, storage.retention_days,
                           storage.quarantine_retention_days, dry_run=dry_run)

    if storage.retention_days == 0:
        typer.echo("storage.retention_days = 0: studies' images are kept for ever")
    if dry_run:
        with db.session_scope(settings.database_url) as session:
            report = run(session)
    else:
        subject: dict[str, object] = {"retention_days": storage.retention_days,
                                      "quarantine_retention_days": storage.quarantine_retention_days}
        with audited_change(ctx, "admin.spool.prune", subject) as session:
            report = run(session)
            subject.update(studies=[s.study_instance_uid for s in report.studies][:1000],
                           files=report.files + report.quarantine_files,
                           bytes=report.bytes + report.quarantine_bytes)
    verb = "would remove" if dry_run else "removed"
    for study in report.studies:
        typer.echo(f"{study.study_instance_uid}  delivered {study.delivered_at:%Y-%m-%d %H:%M} UTC  "
                   f"{study.files} files  {study.bytes} bytes")
    typer.echo(f"{verb} {report.files} files, {_mb(report.bytes)} of {len(report.studies)} studies "
               f"delivered more than {storage.retention_days} days ago")
    if storage.quarantine_retention_days:
        typer.echo(f"{verb} {report.quarantine_files} quarantined files, {_mb(report.quarantine_bytes)} "
                   f"older than {storage.quarantine_retention_days} days")


@app.command("status")
def status(
    ctx: typer.Context,
    node_only: Annotated[bool, typer.Option("--node-only", help="only C-ECHO the node (container healthcheck)")] = False,
) -> None:
    """Print the health of database, broker, workers, node, model, queue and deliveries, storage and
    destinations; exit 1 if any is down (a delivery failed for good counts as down)."""
    from gateway.status import run_checks

    checks = run_checks(get_settings(ctx), node_only=node_only)
    for check in checks:
        typer.echo(f"{'ok  ' if check.ok else 'DOWN'}  {check.component:<22} {check.detail}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


model_app = typer.Typer(help="The MedRegA checkpoint.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("convert")
def model_convert(
    src: Annotated[Path, typer.Argument(
        help="folder of the original checkpoint, Luxuriant16/medrega (config.json, *.safetensors, tokenizer)")],
    dst: Annotated[Path, typer.Argument(help="new folder for the converted checkpoint (model.path)")],
    overwrite: Annotated[bool, typer.Option(help="replace DST if it is not empty")] = False,
    max_shard_gb: Annotated[float, typer.Option(help="largest output shard, GiB (1024^3 bytes)")] = (
        DEFAULT_MAX_SHARD_BYTES / 1024**3),
) -> None:
    """Convert MedRegA's original checkpoint (SRC) into the native layout the worker loads (DST).

    Exit status 2 when the checkpoint cannot be converted (the message says why).
    """
    from model.convert import ConversionError, convert_checkpoint

    try:
        convert_checkpoint(src, dst, max_shard_bytes=int(max_shard_gb * 1024**3), overwrite=overwrite,
                           log=lambda message: typer.echo(message, err=True))
    except ConversionError as exc:
        fail(f"model convert: {exc}", code=2)


def _windows_of_findings(database_url: str, tracking_uids: Sequence[str]) -> dict[str, str]:
    """CT window of the model run that found each region (by Tracking UID), where it used one.

    An unreadable database is a warning, not a failure: the boxes are then drawn on the image's
    own window, as the SR alone says."""
    from sqlalchemy import make_url, select
    from sqlalchemy.exc import SQLAlchemyError

    from common.models import Finding, ModelRun

    def unreadable(why: str) -> dict[str, str]:
        typer.echo(f"warning: findings database not readable ({why}): boxes the SR names no window "
                   "for are drawn on the image's own window", err=True)
        return {}

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(str(url.database)).is_file():
        return unreadable(f"{url.database} does not exist")  # a look-up never creates a database
    try:
        with db.session_scope(database_url) as session:
            rows = session.execute(
                select(Finding.tracking_uid, ModelRun.window)
                .join(ModelRun, ModelRun.id == Finding.model_run_id)
                .where(Finding.tracking_uid.in_(list(tracking_uids)), ModelRun.window.is_not(None))
            ).all()
    except SQLAlchemyError as exc:
        return unreadable(type(exc).__name__)
    return {str(uid): str(window) for uid, window in rows}


@app.command("render")
def render(
    ctx: typer.Context,
    sr_file: Path,
    out: Annotated[Path, typer.Option("--out", help="PNG to write")],
    spool: Annotated[bool, typer.Option(help="also look for the images in the configured spool")] = True,
) -> None:
    """Draw the images an SR references with its boxes and labels (English and Chinese).

    Each box is drawn on the CT window it was found on: the SR names it; for SRs written before
    it did, the window of the model run that found the box, from the findings database."""
    from sr_writer.errors import RenderError
    from sr_writer.render import render_command

    spool_dir = None
    window_lookup = None
    if spool:
        settings = get_settings(ctx)
        candidate = settings.data_dir / "spool"
        spool_dir = candidate if candidate.is_dir() else None
        window_lookup = functools.partial(_windows_of_findings, settings.database_url)
    try:
        written = render_command(sr_file, out, spool_dir=spool_dir, window_lookup=window_lookup)
    except RenderError as exc:
        fail(str(exc))
    typer.echo(f"wrote {written}")
