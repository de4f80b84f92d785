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
