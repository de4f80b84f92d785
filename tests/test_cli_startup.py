"""Long-running commands refuse to start on a database that is behind or on broken task plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import cli, free_port, write_config


def test_serve_refuses_a_database_that_is_behind(tmp_path: Path) -> None:
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    result = cli(config, "serve", check=False)
    assert result.returncode == 3
    assert "medrega-gateway db upgrade" in result.stderr


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
        listening = [c.laddr for c in psutil.Process(serve.proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == metrics_port]
        assert [a.ip for a in listening] == ["127.0.0.1"]
    finally:
        serve.stop()
