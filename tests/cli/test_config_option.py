"""``--config`` is accepted before or after any sub-command, and from MEDREGA_CONFIG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import config_first

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("given", "expected"), [
    (["db", "upgrade", "--config", "g.toml"], ["--config", "g.toml", "db", "upgrade"]),
    (["jobs", "list", "-c", "g.toml", "--state", "dead"], ["-c", "g.toml", "jobs", "list", "--state", "dead"]),
    (["config", "--config=g.toml"], ["--config=g.toml", "config"]),
    (["--config", "g.toml", "status"], ["--config", "g.toml", "status"]),
    (["render", "--", "--config"], ["render", "--", "--config"]),  # after --: a file name
])
def test_config_moves_before_the_sub_command(given: list[str], expected: list[str]) -> None:
    assert config_first(given) == expected


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[node]\nport = {port}\n[storage]\ndata_dir = "{tmp_path / "var"}"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_the_cli_reads_the_config_wherever_it_is_given(tmp_path: Path, where: str) -> None:
    config = _config(tmp_path, 11999)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDREGA_")}
    args = {"before": ["--config", str(config), "config"], "after": ["config", "--config", str(config)],
            "environment": ["config"]}[where]
    if where == "environment":
        env["MEDREGA_CONFIG"] = str(config)
    result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "11999" in result.stdout
