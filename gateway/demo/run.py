"""``medrega-gateway demo``: the whole path on embedded defaults, with no server to install.

1. A temporary folder gets a config (embedded SQLite database and broker, ``replay`` backend with
   recorded MedRegA-style answers) and the database is migrated.
2. The demo plays the PACS: a pynetdicom Storage SCP of its own receives the results.
3. ``medrega-gateway serve`` starts as a child process (DICOM node + dispatcher + worker).
4. A sample study (CT, MR, CR) is sent by C-STORE; the demo waits until the SRs reach its PACS and
   prints where each landed and what it says.

The answers are *replayed*: every SR says so in its device and algorithm identification.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE, evt, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from .samples import make_sample_study

__all__ = ["run_demo", "DemoPACS", "demo_replay_lines"]

PACS_AE = "DEMOPACS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoPACS:
    """A minimal PACS: a Storage SCP that files everything it receives under ``folder``."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.received: list[Path] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=PACS_AE)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        self._ae = ae
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(path)
        return 0x0000

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                             evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def demo_replay_lines(images: dict[str, str]) -> list[dict[str, str]]:
    """Recorded answers in MedRegA's output format for the demo study.

    ``images`` maps each SOP Instance UID to its modality; answers are keyed on the UIDs so that
    each image gets an answer that fits it.
    """
    region = {
        "CR": ("<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref>"
               "<box>[[535, 128, 923, 889]]</box>: No focal consolidation, pleural effusion, or pneumothorax "
               "is seen. <ref>heart</ref><box>[[420, 480, 700, 790]]</box>: The cardiac silhouette is mildly "
               "enlarged.",
               "<ref>右肺</ref><box>[[104, 108, 480, 905]]</box>，<ref>左肺</ref><box>[[536, 130, 920, 890]]</box>"
               "：未见明确实变、胸腔积液或气胸。<ref>心脏</ref><box>[[418, 482, 702, 788]]</box>：心影稍增大。"),
        "CT": ("<ref>vertebral body</ref><box>[[402, 560, 598, 790]]</box>: No destructive lesion.",
               "<ref>椎体</ref><box>[[400, 562, 600, 788]]</box>：未见骨质破坏。"),
        "MR": ("No focal abnormality is located.", "未见明确异常。"),
    }
    report = {
        "CR": ("Findings: The lungs are clear. The cardiac silhouette is mildly enlarged. "
               "Impression: Mild cardiomegaly without acute cardiopulmonary process.",
               "影像诊断：双肺野清晰，未见明确实变影；心影稍增大。影像结论：心影稍大，余未见明显异常。"),
        "CT": ("Findings: Axial CT slice without focal abnormality. Impression: No acute finding.",
               "影像诊断：所示层面未见明确异常密度影。影像结论：未见明显异常。"),
        "MR": ("Findings: Single MR slice without focal signal abnormality. Impression: Unremarkable.",
               "影像诊断：所示层面未见明确异常信号。影像结论：未见明显异常。"),
    }
    lines: list[dict[str, str]] = []
    for uid, modality in images.items():
        for i, language in enumerate(("en", "zh")):
            lines.append({"sop_instance_uid": uid, "language": language, "prompt_contains": "<ref>",
                          "answer": region[modality][i]})
            lines.append({"sop_instance_uid": uid, "language": language, "answer": report[modality][i]})
    return lines


def _send(files: list[Path], port: int, called_ae: str) -> list[int]:
    ae = AE(ae_title="DEMOMOD")
    datasets = [pydicom.dcmread(f) for f in files]
    for sop_class in sorted({ds.SOPClassUID for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError("the gateway refused the association")
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("the DICOM node did not start listening")


def _describe_sr(path: Path, out=sys.stdout) -> None:
    ds = pydicom.dcmread(path)
    print(f"\n  {path}", file=out)
    print(f"    {ds.SOPClassUID.name} | {ds.get('SeriesDescription', '')} | "
          f"VerificationFlag {ds.VerificationFlag} | CompletionFlag {ds.CompletionFlag}", file=out)
    for item in ds.get("ContentSequence", []):
        _print_item(item, out, depth=2)


def _print_item(item: pydicom.Dataset, out, depth: int) -> None:
    name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
    vt = item.ValueType
    pad = "    " * depth
    if vt == "TEXT":
        print(f"{pad}{name}: {item.TextValue}", file=out)
    elif vt == "CODE":
        print(f"{pad}{name}: {item.ConceptCodeSequence[0].CodeMeaning}", file=out)
    elif vt == "UIDREF" and name == "Tracking Unique Identifier":
        print(f"{pad}{name}: {item.UID}", file=out)
    elif vt == "SCOORD":
        pts = [round(float(v), 1) for v in item.GraphicData]
        ref = item.ContentSequence[0].ReferencedSOPSequence[0] if "ContentSequence" in item else None
        where = f" on {ref.ReferencedSOPInstanceUID}" if ref is not None else ""
        print(f"{pad}{name}: {item.GraphicType} {pts[:2]}..{pts[4:6]} (pixels){where}", file=out)
    elif vt == "NUM":
        mv = item.MeasuredValueSequence[0]
        print(f"{pad}{name}: {mv.NumericValue} {mv.MeasurementUnitsCodeSequence[0].CodeValue}", file=out)
    elif vt == "CONTAINER" and name in ("Imaging Measurements", "Measurement Group", "Finding", "Findings"):
        print(f"{pad}{name}", file=out)
    if "ContentSequence" in item and vt == "CONTAINER":
        for child in item.ContentSequence:
            _print_item(child, out, depth + 1)


def _render(received: list[Path], spool: Path, folder: Path) -> None:
    """Draw each SR's boxes on its images (English and Chinese labels) for a human to check."""
    from sr_writer.errors import RenderError
    from sr_writer.render import render_command

    for path in sorted(received):
        out = folder / f"{path.stem}.png"
        try:
            render_command(path, out, spool_dir=spool)
        except RenderError as exc:
            print(f"  (no picture for {path.name}: {exc})")
            continue
        print(f"  picture of the regions: {out}")


def run_demo(keep: Path | None = None, timeout_s: float = 300.0) -> int:
    """Run the demo; returns the process exit status (0 when both SRs reached the PACS)."""
    from common.db import upgrade

    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="medrega-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    node_port, pacs_port = _free_port(), _free_port()
    print(f"[1/5] demo folder {folder}")
    sample = make_sample_study(folder / "study")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sample.files]
    images = {h.SOPInstanceUID: h.Modality for h in headers}
    replay = folder / "replay.jsonl"
    replay.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in demo_replay_lines(images)),
                      encoding="utf-8")
    config = folder / "gateway.toml"
    config.write_text(
        f"""[node]
ae_title = "MEDREGA"
host = "127.0.0.1"
port = {node_port}
stable_after_s = 2
metrics_port = 0

[storage]
data_dir = "var"

[model]
backend = "replay"
path = "{replay}"

[[destinations]]
name = "demo-pacs"
ae_title = "{PACS_AE}"
host = "127.0.0.1"
port = {pacs_port}
""",
        encoding="utf-8",
    )
    from common.settings import load_settings

    settings = load_settings(config)
    upgrade(settings.database_url)
    print(f"[2/5] gateway config {config} (embedded database and broker under {settings.data_dir})")

    pacs = DemoPACS(folder / "pacs", pacs_port)
    pacs.start()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_port(node_port, proc, 60)
        print(f"[3/5] gateway serving on port {node_port} (log {log_path}); PACS {PACS_AE} on port {pacs_port}")
        statuses = _send(sample.files, node_port, "MEDREGA")
        print(f"[4/5] sent {len(sample.files)} instances of study {sample.study_instance_uid}: "
              f"statuses {', '.join(hex(s) for s in statuses)}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(pacs.received) < 2:
            if proc.poll() is not None:
                print(f"serve stopped unexpectedly; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        if len(pacs.received) < 2:
            print(f"timed out waiting for the SRs; see {log_path}", file=sys.stderr)
            return 1
        time.sleep(1.0)
        print(f"[5/5] the PACS received {len(pacs.received)} result objects:")
        for path in sorted(pacs.received):
            _describe_sr(path)
        _render(pacs.received, settings.data_dir / "spool", folder)
        print(f"\nDone. The demo's files (received SRs, pictures, logs, database) are in {folder}")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        pacs.stop()
