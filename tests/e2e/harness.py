"""Runs the gateway as an operator does: ``serve`` (and ``worker``) as child processes of a config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, *, node_port: int, destinations: Iterable[dict], backend: str,
                 model_path: str = "", database_url: str = "", broker_url: str = "",
                 stable_after_s: float = 1.0, extra: str = "") -> Path:
    lines = [
        "[node]", 'ae_title = "MEDREGA"', 'host = "127.0.0.1"', f"port = {node_port}",
        f"stable_after_s = {stable_after_s}", "minimum_free_disk_mb = 1", f"metrics_port = {free_port()}", "",
        "[storage]", f'data_dir = "{folder / "var"}"', "",
        "[database]", f'url = "{database_url}"', "",
        "[queue]", f'broker_url = "{broker_url}"', "",
        "[model]", f'backend = "{backend}"', f'path = "{model_path}"', "",
    ]
    for dest in destinations:
        lines += ["[[destinations]]"] + [f"{k} = {json.dumps(v)}" for k, v in dest.items()] + [""]
    path = folder / "gateway.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def write_replay(path: Path, lines: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def cli(config: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, check=check, cwd=REPO)


@dataclass
class Process:
    """A child process whose output goes to a log file (shown when a test fails)."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        env = dict(os.environ, PYTHONUNBUFFERED="1", TCP_NODELAY="1", **self.env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def gateway_process(config: Path, command: str, log_path: Path, *args: str) -> Process:
    return Process([sys.executable, "-m", "gateway", "--config", str(config), command, *args], log_path)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, processes: Iterable[Process] = ()) -> None:
    deadline = time.monotonic() + timeout
    procs = list(processes)
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.args[3:5]} exited while waiting for {what}:\n{p.log()[-4000:]}")
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.args[3:5]}\n{p.log()[-4000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
