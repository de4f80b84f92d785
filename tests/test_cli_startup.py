"""Long-running commands refuse to start on a database that is behind or on broken task plans."""

from __future__ import annotations

from pathlib import Path

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
    assert last.startswith("medrega-gateway: model.plans_path:") and "no [en] section" in last, result.stderr


def test_status_reports_what_is_down(tmp_path: Path) -> None:
    """No node listening and a destination nobody answers on: `status` says so and exits 1."""
    dead = free_port()
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x",
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": dead}])
    cli(config, "db", "upgrade")
    from gateway.admin import add_destination
    from gateway.db import session_scope
    from gateway.settings import load_settings

    with session_scope(load_settings(config, environ={}).database_url) as s:
        add_destination(s, "pacs", "PACS", "127.0.0.1", dead)
    result = cli(config, "status", check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and "database" in line for line in lines), result.stdout
    assert any(line.startswith("DOWN") and " node " in line for line in lines), result.stdout
    assert any(line.startswith("DOWN") and "destination pacs" in line for line in lines), result.stdout
