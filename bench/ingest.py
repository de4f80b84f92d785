"""C-STORE ingest benchmark: our node against DCMTK storescp and Orthanc, in one interleaved run.

The sender is always DCMTK ``storescu +sd +r`` (TCP_NODELAY=1), one process per association.
Receivers:

* ``storescp``        DCMTK storescp (one association at a time), writes files, no fsync
* ``storescp-fork``   DCMTK storescp --fork (a process per association)
* ``orthanc``         Orthanc 1.10 (its SQLite index + storage area; fsyncs every instance)
* ``node``            our StorageSCP in its own process (fsync per instance, database row, then answer)
* ``node-base``       the same from another checkout (``--baseline DIR``, e.g. main before a
                      change, in a ``git worktree``): before and after in one interleaved run

Corpora (generated once into --work, reused): ``ct`` 1000 CT-like instances of ~0.5 MB in 4
series, ``xr`` 200 radiographs of ~8.4 MB, and with --rss a 2000-instance study for the node's
peak RSS. Each (corpus, associations) case runs every receiver once per round, receivers
interleaved, and the median of the rounds is printed with the ratio node / receiver, and the CPU
time (user + system, all the receiver's processes) it spent per instance.

    .venv/bin/python bench/ingest.py --quick            # 20 CT + 4 XR, one round: seconds (the test suite's run)
    .venv/bin/python bench/ingest.py --rounds 3 --rss   # the numbers in docs/benchmarks.md
    git worktree add /tmp/base BASE_COMMIT                # a change against its base:
    .venv/bin/python bench/ingest.py --baseline /tmp/base --receivers node-base,node,orthanc

The node runs with its default settings (``node.processes = 0``: one listener process per CPU
core); its peak RSS is the sum over its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENV = dict(os.environ, TCP_NODELAY="1")


# -- corpora ---------------------------------------------------------------------------------
def _write_instances(folder: Path, count: int, series: int, rows: int, cols: int, modality: str, seed: int) -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's test file CT_small.dcm is not installed")
    base = pydicom.dcmread(path)
    rng = np.random.default_rng(seed)
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    pixels = rng.integers(0, 4000, size=(rows, cols), dtype=np.uint16)
    base.Modality = modality
    base.Rows, base.Columns = rows, cols
    base.BitsAllocated, base.BitsStored, base.HighBit, base.PixelRepresentation = 16, 12, 11, 0
    base.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for i in range(count):
        s = i % series
        ds = base.copy()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uids[s]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        pixels[0, 0] = i % 4000  # distinct content per instance
        ds.PixelData = pixels.tobytes()
        sub = folder / f"s{s}"
        sub.mkdir(parents=True, exist_ok=True)
        ds.save_as(sub / f"{i:05d}.dcm", enforce_file_format=True)


CORPORA = {
    # name: (count, series, rows, cols, modality)
    "ct": (1000, 4, 512, 512, "CT"),
    "xr": (200, 4, 2048, 2048, "DX"),
    "rss": (2000, 4, 512, 512, "CT"),
}


def corpus(work: Path, name: str, scale: float) -> Path:
    count, series, rows, cols, modality = CORPORA[name]
    count = max(series, int(count * scale))
    folder = work / f"corpus-{name}-{count}"
    done = work / f"corpus-{name}-{count}.done"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {name}: {count} instances of {rows}x{cols} ...", flush=True)
        _write_instances(folder, count, series, rows, cols, modality, seed=count)
        done.touch()
    return folder


def corpus_stats(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*.dcm")]
    return len(files), sum(p.stat().st_size for p in files)


# -- receivers -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def _tree_pids(pid: int) -> list[int]:
    pids = [pid]
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        for child in out.split():
            pids += _tree_pids(int(child))
    except OSError:
        pass
    return pids


def peak_rss_mb(pid: int, total: bool = False) -> float:
    """Largest VmHWM among the process and its children (MB); with ``total`` their sum (the
    node with several listener processes)."""
    peaks = []
    for p in _tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    if not peaks:
        return 0.0
    return sum(peaks) if total else max(peaks)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its live children (``/proc/<pid>/stat``)."""
    total = 0
    for p in _tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Receiver:
    name: str
    port: int
    ae_title: str
    proc: subprocess.Popen
    folder: Path

    def cpu(self) -> float:
        """CPU seconds used so far by the receiver (all its processes)."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> float:
        # Orthanc and storescp --fork: the largest process; the node: all its processes together
        rss = peak_rss_mb(self.proc.pid, total=self.name.startswith("node"))
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        return rss


def _popen(args: list[str], folder: Path, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    log = open(folder / "receiver.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or ENV, cwd=folder,
                            start_new_session=True, **kw)


#: the checkout ``node-base`` runs (``--baseline``); ``node`` runs this one
CHECKOUTS = {"node": REPO}


NODE_CODE = """
import logging, signal, sys, threading
try:
    from common.settings import load_settings
    from common.db import upgrade
except ImportError:  # a checkout from before issue 12's layout (--baseline)
    from common.settings import load_settings
    from common.db import upgrade
from dicom_node.scp import StorageSCP
logging.basicConfig(level=logging.WARNING)
settings = load_settings(environ={}, storage={"data_dir": sys.argv[1]},
    node={"ae_title": "MEDREGA", "host": "127.0.0.1", "port": int(sys.argv[2]),
          "minimum_free_disk_mb": 1024, "maximum_associations": 32})
upgrade(settings.database_url)
scp = StorageSCP(settings, processes=int(sys.argv[3]) or None)
scp.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("ready", flush=True)
stop.wait()
scp.stop()
"""


def start_receiver(kind: str, work: Path, processes: int) -> Receiver:
    folder = Path(tempfile.mkdtemp(prefix=f"rx-{kind}-", dir=work))
    port = free_port()
    if kind in ("storescp", "storescp-fork"):
        args = ["storescp", "-aet", "STORESCP", "-od", str(folder / "in"), "+xa", str(port)]
        (folder / "in").mkdir()
        if kind == "storescp-fork":
            args.insert(1, "--fork")
        proc = _popen(args, folder)
        ae = "STORESCP"
    elif kind == "orthanc":
        config = {
            "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(),
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "StorageCompression": False, "Plugins": [], "SaveJobs": False, "DicomAlwaysAllowStore": True,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        proc = _popen(["Orthanc", str(folder / "orthanc.json")], folder)
        ae = "ORTHANC"
    elif kind.startswith("node"):
        env = dict(ENV, PYTHONPATH=str(CHECKOUTS[kind]))
        proc = _popen([PYTHON, "-c", NODE_CODE, str(folder / "data"), str(port), str(processes)], folder, env)
        ae = "MEDREGA"
    else:
        raise ValueError(kind)
    wait_port(port, proc)
    return Receiver(kind, port, ae, proc, folder)


def send(receiver: Receiver, folders: list[Path]) -> float:
    """Run one storescu per folder in parallel; seconds from start to the last exit."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aec", receiver.ae_title, "-aet", "BENCH", "+sd", "+r",
                          "127.0.0.1", str(receiver.port), str(f)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for f in folders
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    bad = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"storescu to {receiver.name} failed: {bad[0][-500:]!r}")
    return elapsed


def split(folder: Path, associations: int) -> list[Path]:
    series = sorted(p for p in folder.iterdir() if p.is_dir())
    if associations == 1:
        return [folder]
    assert len(series) >= associations
    return series[:associations]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medrega-bench")
    ap.add_argument("--quick", action="store_true", help="a fiftieth of the corpora, one round (the test suite's run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--receivers", default="storescp,storescp-fork,orthanc,node")
    ap.add_argument("--corpora", default="ct,xr")
    ap.add_argument("--associations", default="1,4")
    ap.add_argument("--processes", type=int, default=0,
                    help="node listener processes (default 0: the node's default, node.processes = 0, one per CPU core)")
    ap.add_argument("--rss", action="store_true", help="also: node peak RSS receiving a 2000-instance study")
    ap.add_argument("--baseline", type=Path, help="checkout that the node-base receiver runs (e.g. a git worktree of main)")
    args = ap.parse_args()
    if args.baseline is not None:
        CHECKOUTS["node-base"] = args.baseline.resolve()
    scale = 0.02 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    args.work.mkdir(parents=True, exist_ok=True)
    receivers = args.receivers.split(",")
    results: dict[tuple[str, int, str], list[tuple[float, float, float]]] = {}
    sizes = {}
    for name in args.corpora.split(","):
        folder = corpus(args.work, name, scale)
        sizes[name] = corpus_stats(folder)
        for assoc in (int(a) for a in args.associations.split(",")):
            processes = args.processes
            for r in range(rounds):
                for kind in receivers:
                    rx = start_receiver(kind, args.work, processes)
                    try:
                        cpu_before = rx.cpu()
                        secs = send(rx, split(folder, assoc))
                        cpu = rx.cpu() - cpu_before
                    finally:
                        rss = rx.stop()
                    n, size = sizes[name]
                    results.setdefault((name, assoc, kind), []).append((secs, rss, cpu / n * 1e3))
                    print(f"  {name} x{assoc} {kind:<14} round {r + 1}: {n / secs:7.1f} inst/s "
                          f"{size / secs / 1e6:7.1f} MB/s  peak RSS {rss:6.0f} MB  "
                          f"CPU {cpu / n * 1e3:5.2f} ms/inst", flush=True)

    print(f"\nmedian of {rounds} round(s); {os.cpu_count()} CPUs; sender storescu +sd +r, TCP_NODELAY=1")
    print(f"{'corpus':<8}{'assoc':>6}  {'receiver':<14}{'inst/s':>9}{'MB/s':>9}{'RSS MB':>8}"
          f"{'CPU ms/inst':>13}  node / receiver")
    for (name, assoc, kind), runs in results.items():
        n, size = sizes[name]
        secs = statistics.median(s for s, _, _ in runs)
        rss = max(r for _, r, _ in runs)
        cpu_ms = statistics.median(c for _, _, c in runs)
        node_secs = statistics.median(s for s, _, _ in results.get((name, assoc, "node"), runs))
        ratio = secs / node_secs
        print(f"{name:<8}{assoc:>6}  {kind:<14}{n / secs:9.1f}{size / secs / 1e6:9.1f}{rss:8.0f}"
              f"{cpu_ms:13.2f}  {ratio:5.2f}x")

    if args.rss:
        folder = corpus(args.work, "rss", 1.0)
        rx = start_receiver("node", args.work, args.processes)
        try:
            secs = send(rx, [folder])
        finally:
            rss = rx.stop()
        n, size = corpus_stats(folder)
        print(f"\nnode, one association, a {n}-instance study ({size / 1e6:.0f} MB): "
              f"{n / secs:.1f} inst/s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
