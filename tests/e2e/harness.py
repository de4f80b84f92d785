"""Runs the gateway as an operator does: ``serve`` (and ``worker``) as child processes of a config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Self
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import SHARED, require_tool

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_answers() -> dict[int, str]:
    path = SHARED / "medrega-reference" / "data_file.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests replay MedRegA's reference answers from it")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["id"]: line["conversations"][1]["value"] for line in lines}


def reference_replay_lines(ct_uid: str, cr_uid: str) -> list[dict]:
    """What the model "says", taken from MedRegA's own reference answers, for the prompts of
    :data:`BILINGUAL_REGION_PLANS` (regions in both languages)."""
    ref = reference_answers()
    return [
        # Chest radiograph: the grounded report (two regions) and a Chinese located lesion.
        {"sop_instance_uid": cr_uid, "language": "en", "prompt_contains": "<ref>", "answer": ref[9]},
        {"sop_instance_uid": cr_uid, "language": "zh", "prompt_contains": "<ref>", "answer": ref[10]},
        # CT: one label with two boxes (text-to-region answer), and nothing found in Chinese.
        {"sop_instance_uid": ct_uid, "language": "en", "prompt_contains": "<ref>", "answer": ref[8]},
        {"sop_instance_uid": ct_uid, "language": "zh", "prompt_contains": "<ref>", "answer": "未见明确病灶。"},
        {"language": "en", "prompt_contains": "report", "answer": ref[4]},
        {"language": "zh", "prompt_contains": "报告", "answer": ref[5]},
    ]


#: A plans file (model.plans_path) asking every image for regions in both languages: the English
#: grounded report and the Chinese locate-and-describe prompt about a disease (issue 14: that
#: prompt never names normal anatomy), and the report in each language. The shipped plans ask
#: each task in the one language it was trained in; the tests of bilingual region handling
#: (pairing, codes, viewers) use this one.
BILINGUAL_REGION_PLANS = """
[[plans]]
name = "bilingual-regions"
modalities = ["*"]
prompts = [
  { prompt = "grounded_report_en", slots = { structures = ["right lung", "left lung"] } },
  { prompt = "locate_describe_zh", slots = { diseases = ["病灶"] } },
  { prompt = "report_en" },
  { prompt = "report_zh" },
]
"""


def write_bilingual_region_plans(folder: Path) -> Path:
    """:data:`BILINGUAL_REGION_PLANS` written to ``folder``/plans.toml."""
    path = folder / "plans.toml"
    path.write_text(BILINGUAL_REGION_PLANS, encoding="utf-8")
    return path


def write_config(folder: Path, *, node_port: int, destinations: Iterable[dict], backend: str,
                 model_path: str = "", database_url: str = "", broker_url: str = "",
                 stable_after_s: float = 1.0, extra: str = "",
                 sections: dict[str, dict] | None = None) -> Path:
    """``sections`` sets or adds keys of tables (``{"queue": {"task_time_limit_s": 20}, "sender": {...}}``);
    ``extra`` is appended as it is (new tables only: TOML forbids declaring a table twice)."""
    tables: dict[str, dict] = {
        "node": {"ae_title": "MEDREGA", "host": "127.0.0.1", "port": node_port, "stable_after_s": stable_after_s,
                 "minimum_free_disk_mb": 1, "metrics_port": free_port()},
        "storage": {"data_dir": str(folder / "var")},
        "database": {"url": database_url},
        "queue": {"broker_url": broker_url},
        "model": {"backend": backend, "path": model_path},
    }
    for name, values in (sections or {}).items():
        tables[name] = {**tables.get(name, {}), **values}
    lines = []
    for name, values in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()] + [""]
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
    cwd: Path = REPO

    def start(self) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TCP_NODELAY": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                     start_new_session=True)
        return self

    @property
    def popen(self) -> subprocess.Popen:
        """The child, once :meth:`start` has run."""
        if self.proc is None:
            raise RuntimeError(f"not started: {' '.join(self.args)}")
        return self.proc

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


class StoreSCP(Process):
    """DCMTK ``storescp`` playing the PACS (TCP_NODELAY=1 is set by Process); may be started again."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__([require_tool("storescp"), "-aet", ae_title, "-od", str(folder), "+uf", str(port)],
                         folder.parent / f"storescp-{port}.log")
        self.folder, self.port = folder, port

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))


def redis_server(folder: Path, port: int) -> Process:
    """A private, non-persistent ``redis-server`` on ``port`` (tests isolated from the shared one)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Process([require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(folder), "--daemonize", "no"], folder / f"redis-{port}.log")


def storescu(port: int, files: Iterable[Path], *, called_ae: str = "MEDREGA", calling_ae: str = "MODALITY",
             extra_args: Iterable[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """DCMTK ``storescu`` (TCP_NODELAY=1); the caller checks ``returncode`` (non-zero: something refused)."""
    return subprocess.run([require_tool("storescu"), "-aet", calling_ae, "-aec", called_ae, *extra_args, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TCP_NODELAY="1"))
