"""``medrega-gateway worker --gpus 0,1``: one worker process per GPU.

Each child sees one device (``CUDA_VISIBLE_DEVICES``), loads the model once and takes one job at a
time, so a host with N GPUs runs N jobs at once. A child that dies is started again (after a
short pause); SIGTERM/SIGINT stop all of them (each finishes or re-queues its task: tasks are
acknowledged late).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_per_gpu", "RESTART_PAUSE_S"]

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 5.0


def _start(gpu: str, args: Sequence[str], config: Path | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gateway"] + (["--config", str(config)] if config else []) + ["worker", *args]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    log.info("starting worker for GPU %s", gpu)
    return subprocess.Popen(cmd, env=env)


def run_per_gpu(gpus: Sequence[str], args: Sequence[str], config: Path | None) -> int:
    """Run and supervise one worker per GPU until stopped; returns the exit status."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = {gpu: _start(gpu, args, config) for gpu in gpus}
    while not stopping:
        time.sleep(1.0)
        for gpu, proc in list(children.items()):
            if proc.poll() is not None and not stopping:
                log.warning("worker for GPU %s exited with %s; restarting", gpu, proc.returncode)
                time.sleep(RESTART_PAUSE_S)
                children[gpu] = _start(gpu, args, config)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in children.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0
