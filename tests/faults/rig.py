"""A gateway under test for the fault tests (issue 7): config, child processes, PACS, DB queries.

Built on :mod:`tests.e2e.harness` (config writer, child processes in their own process group,
``wait_for``); everything started through :class:`Rig` is stopped by the ``rig`` fixture, killed
if it does not stop, so a failing test never leaves a process behind.
"""

from __future__ import annotations

import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Delivery, DeliveryState, Instance, Job, JobState
from tests.conftest import require_tool
from tests.e2e.harness import (
    Process,
    StoreSCP,
    cli,
    free_port,
    gateway_process,
    port_open,
    redis_server,
    storescu,
    wait_for,
    write_config,
    write_replay,
)

__all__ = ["Rig", "REPLAY_LINES", "sr_languages_by_study", "sr_language"]

NODE_AE = "MEDREGA"
LANGUAGE_OF_CONTENT = "121049"  # DCM "Language of Content Item and Descendants"

#: Replay answers that fit any image: one region in English, one in Chinese, and report text.
REPLAY_LINES = [
    {"language": "en", "prompt_contains": "<ref>", "answer": "<ref>nodule</ref><box>[[100, 120, 300, 340]]</box>: a small nodule."},
    {"language": "zh", "prompt_contains": "<ref>", "answer": "<ref>结节</ref><box>[[100, 120, 300, 340]]</box>：小结节。"},
    {"language": "en", "answer": "Findings: no acute abnormality."},
    {"language": "zh", "answer": "影像诊断：未见明显异常。"},
]


def _content_items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def sr_language(ds: pydicom.Dataset) -> str:
    return next(i.ConceptCodeSequence[0].CodeValue for i in _content_items(ds)
                if i.ConceptNameCodeSequence[0].CodeValue == LANGUAGE_OF_CONTENT)


def sr_languages_by_study(files: Iterable[Path]) -> dict[str, list[str]]:
    """Study Instance UID -> languages of the SRs received for it (sorted; a duplicate shows twice)."""
    out: dict[str, list[str]] = defaultdict(list)
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality == "SR", f"PACS received a {ds.Modality} object"
        out[str(ds.StudyInstanceUID)].append(sr_language(ds))
    return {k: sorted(v) for k, v in out.items()}


@dataclass
class Rig:
    """One gateway: its config (embedded or production), serve/worker processes, a PACS."""

    tmp: Path
    backend: str = "replay"
    database_url: str = ""
    broker_url: str = ""
    sections: dict[str, dict] = field(default_factory=dict)
    with_pacs: bool = True
    node_port: int = field(default_factory=free_port)
    pacs_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        given, self.sections = self.sections, {"sender": {"backoff_initial_s": 0.5, "backoff_max_s": 2, "retries": 20}}
        self.reconfigure(**given)
        self.pacs = StoreSCP(self.tmp / "pacs", self.pacs_port)
        cli(self.config, "db", "upgrade")

    def reconfigure(self, **sections: dict) -> Path:
        """(Re)write the config file, with ``sections`` merged in; processes started later read it."""
        for name, values in sections.items():
            self.sections[name] = {**self.sections.get(name, {}), **values}
        model_path = ""
        if self.backend == "replay":
            model_path = str(write_replay(self.tmp / "replay.jsonl", REPLAY_LINES))
        destinations = ([{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port}]
                        if self.with_pacs else [])
        self.config = write_config(self.tmp, node_port=self.node_port, destinations=destinations,
                                   backend=self.backend, model_path=model_path, database_url=self.database_url,
                                   broker_url=self.broker_url, sections=self.sections)
        return self.config

    # -- processes ----------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "var"

    def track(self, process: Process) -> Process:
        if process not in self.processes:
            self.processes.append(process)
        return process

    def start_pacs(self) -> StoreSCP:
        require_tool("storescp")
        self.track(self.pacs).start()
        wait_for(lambda: port_open(self.pacs_port), 30, "storescp to listen", [self.pacs])
        return self.pacs

    def serve(self, log: str = "serve.log", env: dict[str, str] | None = None) -> Process:
        process = gateway_process(self.config, "serve", self.tmp / log)
        process.env.update(env or {})
        proc = self.track(process).start()
        wait_for(lambda: port_open(self.node_port), 60, "the DICOM node to listen", [proc])
        return proc

    def worker(self, log: str, *args: str) -> Process:
        return self.track(gateway_process(self.config, "worker", self.tmp / log, *args)).start()

    def redis(self, port: int) -> Process:
        require_tool("redis-server")
        proc = self.track(redis_server(self.tmp / "redis", port)).start()
        wait_for(lambda: port_open(port), 30, "redis-server to listen", [proc])
        return proc

    def live(self) -> list[Process]:
        return [p for p in self.processes if p.alive()]

    def stop_all(self) -> None:
        for p in reversed(self.processes):
            try:
                p.stop(signal.SIGTERM, timeout=15)
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass

    # -- sending --------------------------------------------------------------------------------
    def send(self, files: Iterable[Path], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        require_tool("storescu")
        result = storescu(self.node_port, list(files), called_ae=NODE_AE, **kwargs)
        if check:
            assert result.returncode == 0, f"storescu failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        return result

    # -- database -------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with session_scope(self.db_url) as s:
            jobs = s.scalars(select(Job).order_by(Job.id)).all()
            s.expunge_all()
            return list(jobs)

    def instance_count(self) -> int:
        with session_scope(self.db_url) as s:
            return s.scalar(select(func.count(Instance.id))) or 0

    def all_delivered(self, studies: int) -> bool:
        """True when ``studies`` jobs exist and are all DELIVERED; fails at once on a dead job."""
        jobs = self.jobs()
        bad = [(j.id, j.state.value, j.error) for j in jobs if j.state in (JobState.DEAD, JobState.CANCELLED)]
        assert not bad, f"jobs ended badly: {bad}"
        return len(jobs) >= studies and all(j.state == JobState.DELIVERED for j in jobs)

    def delivery_states(self) -> list[DeliveryState]:
        with session_scope(self.db_url) as s:
            return list(s.scalars(select(Delivery.state).order_by(Delivery.id)).all())

    def spool_files(self) -> list[Path]:
        spool = self.data_dir / "spool"
        return sorted(spool.rglob("*.dcm")) if spool.exists() else []


def large_multiframe(path: Path, frames: int, rows: int = 1024, columns: int = 1024) -> Path:
    """A multi-frame CT of frames x rows x columns x 16 bits, written without holding it in memory."""
    import numpy as np
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from tests.dicom_node.corpus import sample

    ds = pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    for tag in [e.tag for e in ds if e.tag.group > 0x0028]:
        del ds[tag]
    dcmwrite(path, ds, enforce_file_format=True)
    frame = (np.arange(rows * columns, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * frames).to_bytes(4, "little"))
        for _ in range(frames):
            f.write(frame)
    return path
