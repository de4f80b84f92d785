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
from typing import TYPE_CHECKING

import pydicom
from pynetdicom import AE, evt, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from .samples import make_sample_study

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

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
        self._server: ThreadedAssociationServer | None = None

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


def demo_replay_lines(images: dict[str, str]) -> list[dict[str, object]]:
    """Recorded answers in MedRegA's output format for the demo study.

    Answers are keyed on the trained instruction of each prompt (``training_set``, see
    model/backends/replay.py), so the demo shows which image got which trained task: the chest
    PA film the MIMIC-CXR report (with a comparison to a prior study, which the gateway leaves
    out and flags), grounded reports and CheXpert/VinDr-CXR classification; the lateral film
    CheXpert only; the chest CT slices the Chinese report, detection of lungs, heart and aorta in
    their windows and a description of each box; the brain MR slices the Chinese report.
    ``images`` maps each SOP Instance UID to its modality (the CT and MR reports differ).
    """
    lines: list[dict[str, object]] = [
        {"training_set": "mimiccxr_train_rg",
         "answer": "Findings: In comparison with the study of ___, there is little overall change. The lungs are "
                   "clear without focal consolidation. The cardiac silhouette is mildly enlarged. No pleural "
                   "effusion or pneumothorax. Impression: Mild cardiomegaly without acute cardiopulmonary process."},
        {"training_set": "grounded_reports_mimiccxr", "prompt_contains": "<ref>right lung</ref>, <ref>left lung</ref>",
         "answer": "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref><box>[[535, 128, "
                   "923, 889]]</box>: No focal consolidation, pleural effusion, or pneumothorax is seen."},
        {"training_set": "grounded_reports_mimiccxr", "prompt_contains": "<ref>cardiac silhouette</ref>",
         "answer": "<ref>cardiac silhouette</ref><box>[[420, 480, 700, 790]]</box>: The cardiac silhouette is "
                   "mildly enlarged."},
        {"training_set": "grounded_reports_mimiccxr", "prompt_contains": "<ref>mediastinum</ref>",
         "answer": "<ref>mediastinum</ref><box>[[430, 120, 590, 520]]</box>: The mediastinal contours are normal."},
        {"training_set": "grounded_reports_mimiccxr", "prompt_contains": "costophrenic",
         "answer": "<ref>right costophrenic angle</ref><box>[[95, 790, 250, 930]]</box>, <ref>left costophrenic "
                   "angle</ref><box>[[760, 790, 925, 930]]</box>: The costophrenic angles are sharp."},
        {"training_set": "chexpert_train_cls", "answer": "Cardiomegaly"},
        {"training_set": "vindrcxr_train_cls", "answer": "Cardiomegaly"},
    ]
    boxes = {
        "right lung": "[[118, 212, 468, 790]]",
        "left lung": "[[530, 214, 880, 792]]",
        "heart": "[[380, 420, 640, 760]]",
        "aorta": "[[470, 300, 560, 420]]",
    }
    for organ, box in boxes.items():
        lines.append({"training_set": "text2region", "prompt_contains": f"<ref>{organ}</ref>",
                      "answer": f"<ref>{organ}</ref><box>{box}</box>"})
        lines.append({"training_set": "region2text", "prompt_contains": box, "answer": organ})
    reports = {
        "CT": "影像诊断：所示层面双肺纹理清晰，未见明确实变及结节影；心影大小形态未见异常，主动脉未见增宽。"
              "影像结论：胸部CT所示层面未见明显异常。",
        "MR": "影像诊断：所示层面脑实质信号均匀，未见异常信号影，脑室系统未见扩大，中线结构居中。"
              "影像结论：头颅MR所示层面未见明显异常。",
    }
    for uid, modality in images.items():
        if modality in reports:
            lines.append({"sop_instance_uid": uid, "language": "zh", "answer": reports[modality]})
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
    children = item.get("ContentSequence", []) if vt in ("TEXT", "CODE") else []
    language = next((c.ConceptCodeSequence[0].CodeValue for c in children
                     if c.ConceptNameCodeSequence[0].CodeMeaning == "Language of Content Item and Descendants"), None)
    on = [str(c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for c in children if c.ValueType == "IMAGE"]
    where = (f" [text in {language}]" if language else "") + (f" (read from {', '.join(on)})" if on else "")
    if vt == "TEXT":
        print(f"{pad}{name}: {item.TextValue}{where}", file=out)
    elif vt == "CODE":
        code = item.ConceptCodeSequence[0]
        print(f"{pad}{name}: {code.CodeMeaning} ({code.CodingSchemeDesignator} {code.CodeValue}){where}", file=out)
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
