"""Long-running commands refuse to start on a database that is behind or on broken task plans."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common import db
from tests.e2e.harness import REPO, cli, free_port, write_config
from tests.peers.dcmtk import echoscu, wait_for_port


def test_serve_refuses_a_database_that_is_behind(tmp_path: Path) -> None:
    """Behind is never migrated silently: one line whose command, run as printed, fixes it."""
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    cli(config, "db", "upgrade", "--revision", "0001")
    result = cli(config, "serve", check=False)
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("medrega-gateway: database schema is at 0001"), result.stderr
    command = line.split("`")[1]
    assert command == f"medrega-gateway --config {config} db upgrade"
    fixed = subprocess.run([sys.executable, "-m", "gateway", *shlex.split(command)[1:]],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    assert cli(config, "db", "current").stdout.split()[1] == db.head_revision()


def test_serve_on_a_fresh_folder_creates_its_schema_and_answers_c_echo(tmp_path: Path) -> None:
    """The contract: a config file in an empty folder, `serve`, and the node answers C-ECHO."""
    port = free_port()
    (tmp_path / "replay.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "gateway.toml").write_text(
        f'[node]\nae_title = "MEDREGA"\nhost = "127.0.0.1"\nport = {port}\nmetrics_port = 0\n'
        '[model]\nbackend = "replay"\npath = "replay.jsonl"\n', encoding="utf-8")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", "gateway.toml", "serve"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=90, process=proc)
        echo = echoscu("127.0.0.1", port, called_ae="MEDREGA")
        assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    created = [line for line in text.splitlines() if "schema created" in line]
    assert created == [f"medrega-gateway: empty embedded database {tmp_path / 'var' / 'gateway.db'}: "
                       f"schema created (revision {db.head_revision()})"], text
    assert (tmp_path / "var").is_dir()  # storage.data_dir relative to the config file


def test_admin_command_on_a_database_without_schema_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    for args in (("ae", "list"), ("dest", "add", "pacs", "PACS", "127.0.0.1", "104"), ("jobs", "list"),
                 ("token", "list")):
        result = cli(config, *args, check=False)
        assert result.returncode == 3, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines == [f"medrega-gateway: database schema is at nothing (empty database), this gateway "
                         f"needs {db.head_revision()}: run `medrega-gateway --config {config} db upgrade`"], \
            (args, result.stderr)


def test_without_config_one_line_names_the_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDREGA_")}
    result = subprocess.run([sys.executable, "-m", "gateway", "db", "upgrade"], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "built-in defaults" in line]
    assert notes == ["medrega-gateway: no --config and no MEDREGA_CONFIG: built-in defaults and MEDREGA_* "
                     f"variables in use (storage.data_dir = {tmp_path / 'var'})"], result.stderr


def test_worker_refuses_broken_task_plans(tmp_path: Path) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text('[[plans]]\nname = "x"\nmodalities = ["CT"]\n', encoding="utf-8")
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[],
                          extra="")
    text = config.read_text().replace('[model]\n', f'[model]\nplans_path = "{plans}"\n')
    config.write_text(text)
    assert cli(config, "db", "upgrade").returncode == 0
    result = cli(config, "worker", check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medrega-gateway: model.plans_path:") and "plan x: prompts is empty" in last, result.stderr


def test_status_reports_what_is_down(tmp_path: Path) -> None:
    """No node listening and a destination nobody answers on: `status` says so and exits 1."""
    dead = free_port()
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x",
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": dead}])
    cli(config, "db", "upgrade")
    from gateway.admin import add_destination
    from common.db import session_scope
    from common.settings import load_settings

    with session_scope(load_settings(config, environ={}).database_url) as s:
        add_destination(s, "pacs", "PACS", "127.0.0.1", dead)
    result = cli(config, "status", check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and "database" in line for line in lines), result.stdout
    assert any(line.startswith("DOWN") and " node " in line for line in lines), result.stdout
    assert any(line.startswith("DOWN") and "destination pacs" in line for line in lines), result.stdout


def _start_problem(tmp_path: Path, problem: str) -> Path:
    """A config whose database is down, whose database URL has an unknown scheme, or whose
    data_dir cannot be written (a path under a regular file: root may write anywhere else)."""
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    text = config.read_text()
    if problem == "database down":
        text = text.replace('[database]\nurl = ""', f'[database]\nurl = "postgresql://medrega@127.0.0.1:{free_port()}/gone"')
    elif problem == "unknown scheme":
        text = text.replace('[database]\nurl = ""', '[database]\nurl = "mongodb://127.0.0.1/medrega"')
    else:
        (tmp_path / "a-file").write_text("not a folder")
        text = text.replace(f'data_dir = "{tmp_path / "var"}"', f'data_dir = "{tmp_path / "a-file" / "var"}"')
    assert text != config.read_text()
    config.write_text(text)
    return config


@pytest.mark.parametrize("command", [["db", "upgrade"], ["serve"], ["worker"], ["jobs", "list"]])
@pytest.mark.parametrize("problem,code,words", [
    ("database down", 4, "database.url: cannot connect to the database"),
    ("unknown scheme", 2, "configuration error: database.url:"),
    ("unwritable data_dir", 5, "storage.data_dir:"),
])
def test_start_problems_give_one_line_and_an_exit_status(tmp_path: Path, command: list[str], problem: str,
                                                        code: int, words: str) -> None:
    """Issue 13 case 8: one line naming the setting, no traceback, a documented exit status."""
    result = cli(_start_problem(tmp_path, problem), *command, check=False, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"medrega-gateway: {words}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_the_metrics_server_binds_the_nodes_host(tmp_path: Path) -> None:
    """Issue 13 case 8: ``node.metrics_host`` empty (the default) is ``node.host``, not 0.0.0.0."""
    import psutil

    from tests.e2e.harness import gateway_process, port_open, wait_for

    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    assert "metrics_host" not in config.read_text() and 'host = "127.0.0.1"' in config.read_text()
    cli(config, "db", "upgrade")
    metrics_port = int(next(line.split("=")[1] for line in config.read_text().splitlines()
                            if line.startswith("metrics_port")))
    serve = gateway_process(config, "serve", tmp_path / "serve.log").start()
    try:
        wait_for(lambda: port_open(metrics_port), 60, "the metrics server", [serve])
        listening = [c.laddr for c in psutil.Process(serve.popen.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == metrics_port]
        assert [a.ip for a in listening] == ["127.0.0.1"]
    finally:
        serve.stop()


@pytest.mark.parametrize("command", [("worker",), ("serve",)])
def test_serve_and_worker_stop_on_a_missing_checkpoint_with_the_how_to(tmp_path: Path, command) -> None:
    missing = tmp_path / "medrega-converted"
    config = write_config(tmp_path, node_port=free_port(), backend="medrega", model_path=str(missing),
                          destinations=[])
    cli(config, "db", "upgrade")
    result = cli(config, *command, check=False)
    assert result.returncode == 6, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"medrega-gateway: model.path: model.path {missing} is not a folder."), line
    assert "medrega-gateway model convert medrega-original <model.path>" in line

    original = tmp_path / "medrega-original"  # MedRegA's own layout: not converted
    original.mkdir()
    (original / "config.json").write_text('{"model_type": "internvl_chat"}', encoding="utf-8")
    config.write_text(config.read_text().replace(str(missing), str(original)))
    result = cli(config, *command, check=False)
    assert result.returncode == 6
    assert f"run `medrega-gateway model convert {original} <new folder>`" in result.stderr

    status = cli(config, "status", check=False)
    model = [line for line in status.stdout.splitlines() if " model " in line]
    assert len(model) == 1 and model[0].startswith("DOWN") and "not converted" in model[0], status.stdout
