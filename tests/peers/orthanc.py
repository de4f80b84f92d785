"""Orthanc (Debian's ``Orthanc`` binary) as a real PACS for tests.

    with orthanc(tmp_path / "orthanc", modalities={"medrega": ("MEDREGA", "127.0.0.1", node.port)}) as pacs:
        ids = [pacs.upload(p) for p in files]
        pacs.store("medrega", ids)                  # C-STORE to the node (REST /modalities/.../store)
        pacs.find_instance(sop_instance_uid)         # what it received (e.g. our SRs)

Runs with a JSON configuration in a temporary folder, no remote access, no authentication,
``TCP_NODELAY=1`` in its environment, and fails the test when the binary is missing.
``dicomweb=True`` loads Debian's DICOMweb plugin (package ``orthanc-dicomweb``: QIDO-RS, WADO-RS
and STOW-RS of PS3.18 under ``/dicom-web/``), failing the test when it is not installed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, require_tool
from tests.peers.dcmtk import peer_env, wait_for_port

__all__ = ["DICOMWEB_ROOT", "Orthanc", "OrthancError", "orthanc"]

DICOMWEB_ROOT = "/dicom-web"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


def dicomweb_plugin() -> str:
    """Path of Orthanc's DICOMweb plugin; fails the test when it is not installed."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} is missing: run `make setup` (installs orthanc-dicomweb)")
    return str(DICOMWEB_PLUGIN)


class OrthancError(RuntimeError):
    """A REST call to Orthanc failed; the message has its status and answer."""


@dataclass
class Orthanc:
    ae_title: str
    dicom_port: int
    http_port: int
    folder: Path
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = 120) -> Any:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as rsp:
                raw = rsp.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        ctype = rsp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def upload(self, path: Path) -> str:
        """Store a file in Orthanc (REST, not DICOM); returns the Orthanc instance id."""
        return self.rest("POST", "/instances", Path(path).read_bytes())["ID"]

    def store(self, modality: str, resources: Sequence[str]) -> dict:
        """C-STORE resources (instance/series/study ids) to a configured modality, synchronously."""
        return self.rest("POST", f"/modalities/{modality}/store",
                         {"Resources": list(resources), "Synchronous": True})

    def echo(self, modality: str) -> bool:
        try:
            self.rest("POST", f"/modalities/{modality}/echo", {})
            return True
        except OrthancError:
            return False

    def instances(self) -> list[str]:
        return self.rest("GET", "/instances")

    def find_instance(self, sop_instance_uid: str) -> dict | None:
        """Tags of the instance with this SOP Instance UID, or None."""
        ids = self.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
        if not ids:
            return None
        return self.rest("GET", f"/instances/{ids[0]}/simplified-tags")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def orthanc(
    folder: Path,
    *,
    ae_title: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    dicom_port: int | None = None,
    extra_config: dict[str, Any] | None = None,
    dicomweb: bool = False,
) -> Iterator[Orthanc]:
    """Run Orthanc with its storage under ``folder``; ``modalities`` = name -> (AE, host, port)."""
    exe = require_tool("Orthanc")
    plugins = [dicomweb_plugin()] if dicomweb else []
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = free_port()
    config = {
        "Name": "medrega-test-pacs",
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "DicomScuTimeout": 30,
        "Plugins": plugins,
        "StorageCompression": False,
        "SaveJobs": False,
        "StableAge": 1,
        # No "Host" key: BulkDataURIs follow the request's Host header, so a proxy in front keeps its own.
        **({"DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": False}} if dicomweb else {}),
        **(extra_config or {}),
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, str(config_path)], stdout=out, stderr=subprocess.STDOUT,
                                env=peer_env(), cwd=folder)
    pacs = Orthanc(ae_title, dicom_port, http_port, folder, proc, log)
    try:
        wait_for_port("127.0.0.1", http_port, timeout=30, process=proc)
        wait_for_port("127.0.0.1", dicom_port, timeout=30, process=proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                pacs.rest("GET", "/system", timeout=5)
                break
            except (OrthancError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield pacs
    finally:
        pacs.stop()
