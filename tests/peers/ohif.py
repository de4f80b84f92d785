"""The OHIF Viewer itself (the built site that ``@ohif/app`` publishes on npm) served on loopback.

    with orthanc(tmp_path / "orthanc", dicomweb=True) as pacs, ohif_site(pacs.url) as viewer:
        page.goto(f"{viewer}/viewer?StudyInstanceUIDs={study_uid}")

``scripts/setup.sh`` installs the package with ``npm ci`` from the committed lock file in
``tests/viewers/ohif-app/`` (never committed itself: about 200 MB). The server here answers
``/app-config.js`` with that folder's ``app-config.js`` (one DICOMweb data source on the same origin),
forwards ``/dicom-web/...`` to Orthanc's DICOMweb plugin (PS3.18 QIDO-RS / WADO-RS) and serves every
other path from ``dist/``, ``index.html`` for the viewer's own routes (a single-page application).
"""

from __future__ import annotations

import contextlib
import http.server
import mimetypes
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.peers.orthanc import DICOMWEB_ROOT

__all__ = ["OHIF_APP", "ohif_dist", "ohif_site"]

OHIF_APP = REPO / "tests" / "viewers" / "ohif-app"
APP_CONFIG = OHIF_APP / "app-config.js"
# Request headers that matter to Orthanc's DICOMweb plugin; Host makes its BulkDataURIs point here.
FORWARDED_HEADERS = ("accept", "host")
# The viewer's WebAssembly codecs must come with this type to be compiled while streaming.
CONTENT_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}


def ohif_dist() -> Path:
    """``dist/`` of the installed ``@ohif/app``; fails the test when it was not installed."""
    dist = OHIF_APP / "node_modules" / "@ohif" / "app" / "dist"
    if not (dist / "index.html").is_file():
        pytest.fail(f"{dist} is missing: run `make setup` (npm ci in {OHIF_APP.relative_to(REPO)})")
    return dist


class _Handler(http.server.BaseHTTPRequestHandler):
    dist: Path
    upstream: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == DICOMWEB_ROOT or path.startswith(DICOMWEB_ROOT + "/"):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, "text/javascript", APP_CONFIG.read_bytes())
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        file = (self.dist / path.lstrip("/")).resolve()
        if not file.is_file() or self.dist not in file.parents:
            file = self.dist / "index.html"  # a route of the viewer (/viewer?StudyInstanceUIDs=...)
        ctype = CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(200, ctype, file.read_bytes())

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_HEADERS}
        request = urllib.request.Request(self.upstream + self.path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as rsp:
                status, ctype, body = rsp.status, rsp.headers.get("Content-Type", ""), rsp.read()
        except urllib.error.HTTPError as exc:
            status, ctype, body = exc.code, exc.headers.get("Content-Type", ""), exc.read()
        self._send(status, ctype or "application/octet-stream", body)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def ohif_site(upstream: str) -> Iterator[str]:
    """Serve OHIF's ``dist/`` on 127.0.0.1 with DICOMweb forwarded to ``upstream`` (Orthanc's
    http://127.0.0.1:port); yields the viewer's base URL."""
    handler = type("OhifHandler", (_Handler,), {"dist": ohif_dist().resolve(), "upstream": upstream})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def main() -> None:
    """``python -m tests.peers.ohif http://127.0.0.1:8042``: OHIF in front of a running Orthanc
    (with its DICOMweb plugin) until Ctrl-C, to look at a study as a radiologist would."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("orthanc", help="Orthanc's HTTP address, e.g. http://127.0.0.1:8042")
    args = parser.parse_args()
    with ohif_site(args.orthanc.rstrip("/")) as url:
        print(f"OHIF: {url}/  (a study: {url}/viewer?StudyInstanceUIDs=<Study Instance UID>)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
