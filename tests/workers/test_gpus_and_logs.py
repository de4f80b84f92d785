"""`worker --gpus` runs one supervised worker per GPU; JSON logs carry ids and no patient data."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import psutil

from common.logs import JsonFormatter
from tests.e2e.harness import cli, free_port, gateway_process, write_config


def _children_env(pid: int) -> list[dict[str, str]]:
    envs = []
    for child in psutil.Process(pid).children(recursive=False):
        try:
            raw = Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, psutil.NoSuchProcess):
            continue
        envs.append(dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item))
    return envs


def test_worker_gpus_starts_one_worker_per_device_and_restarts_a_dead_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, node_port=free_port(), backend="replay",
                          model_path=str(tmp_path / "none.jsonl"), destinations=[])
    cli(config, "db", "upgrade")
    parent = gateway_process(config, "worker", tmp_path / "worker.log", "--gpus", "0,1").start()
    try:
        deadline = time.monotonic() + 60
        envs: list[dict[str, str]] = []
        while time.monotonic() < deadline and len(envs) < 2:
            envs = _children_env(parent.popen.pid)
            time.sleep(0.3)
        assert sorted(e.get("CUDA_VISIBLE_DEVICES", "") for e in envs) == ["0", "1"], parent.log()
        victim = psutil.Process(parent.popen.pid).children()[0]
        victim.kill()
        victim.wait(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = [c for c in psutil.Process(parent.popen.pid).children() if c.is_running() and c.pid != victim.pid]
            if len(kids) == 2:
                break
            time.sleep(0.5)
        assert len(kids) == 2, "the dead worker was not restarted\n" + parent.log()
    finally:
        os.killpg(parent.popen.pid, signal.SIGTERM)
        parent.popen.wait(timeout=60)
        parent.stop()
    assert parent.popen.returncode == 0


def test_json_log_lines_carry_context_fields() -> None:
    record = logging.LogRecord("workers.tasks", logging.INFO, __file__, 1, "job %s: %s", (7, "done"), None)
    record.job_id = 7
    record.study_instance_uid = "1.2.3"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job 7: done"
    assert entry["job_id"] == 7 and entry["study_instance_uid"] == "1.2.3"
    assert entry["level"] == "INFO" and entry["time"].endswith("+00:00")
