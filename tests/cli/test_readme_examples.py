"""Issue 17: the README's administration examples run as printed.

The README's configuration block is written to ``gateway.toml`` of a fresh folder as it stands;
environment variables (which the README documents as overriding any key) only move it onto free
ports, make a study complete after 2 s, choose the replay backend (no checkpoint here) and point
the configured destination ``pacs`` at a DCMTK ``storescp``. The
"Running it" commands create the database and start ``serve``; a sample study is sent, so that
there is an SR to render; then every line of the "Administration" block runs exactly as printed,
in that folder, through the installed ``medrega-gateway`` command. The example's destination
``archive`` is 10.0.0.10, which no one answers here: ``status`` must say so (and only that).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import Comprehensive3DSRStorage

from tests.conftest import REPO, free_port
from tests.e2e.harness import Process, StoreSCP, storescu, wait_for
from workers.results import RESULTS_DIR

pytestmark = [pytest.mark.peers]

README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {heading!r}"
    return match.group(1)


def _block(text: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"no {language} block"
    return match.group(1)


def _commands(text: str) -> list[str]:
    """The command lines of a sh block, without their trailing comments."""
    lines = []
    for line in _block(text, "sh").splitlines():
        command = line.split("  #", 1)[0].strip()
        if command:
            lines.append(command)
    return lines


def _executable() -> str:
    found = shutil.which("medrega-gateway", path=str(Path(sys.executable).parent))
    assert found, "medrega-gateway is not installed in this environment: run `make setup`"
    return found


class Site:
    """The administrator's folder: gateway.toml, ./var, and the environment of their shell."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.node_port, self.api_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = dict(
            os.environ,
            PATH=f"{Path(_executable()).parent}{os.pathsep}{os.environ['PATH']}",
            TCP_NODELAY="1",
            PYTHONUNBUFFERED="1",
            MEDREGA_NODE__PORT=str(self.node_port),
            MEDREGA_NODE__METRICS_PORT=str(self.metrics_port),
            MEDREGA_NODE__STABLE_AFTER_S="2",
            MEDREGA_API__PORT=str(self.api_port),
            MEDREGA_MODEL__BACKEND="replay",
            MEDREGA_MODEL__PATH=str(REPO / "deploy" / "replay-demo.jsonl"),
        )
        self.env.pop("MEDREGA_CONFIG", None)

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(shlex.split(command), cwd=self.folder, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def background(self, command: str, name: str) -> Process:
        words = shlex.split(command)
        return Process([_executable(), *words[1:]], self.folder / f"{name}.log", env=self.env,
                       cwd=self.folder).start()


def _http(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def test_administration_examples_run_as_printed(tmp_path: Path) -> None:
    from gateway.demo.samples import make_sample_study

    site = Site(tmp_path / "site")
    site.folder.mkdir()
    (site.folder / "gateway.toml").write_text(_block(_section("Running it"), "toml"), encoding="utf-8")
    running = _commands(_section("Running it"))
    upgrade = next(c for c in running if c.endswith(" db upgrade"))
    serve_line = next(c for c in running if c.endswith(" serve"))

    done = site.run(upgrade)
    assert done.returncode == 0, done.stderr
    # the configuration's destination "pacs" is a DCMTK storescp on a free port
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    site.env["MEDREGA_DESTINATIONS"] = json.dumps(
        [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}])
    processes: list[Process] = [pacs.start()]
    serve = site.background(serve_line, "serve")
    processes.append(serve)
    try:
        sample = make_sample_study(tmp_path / "study")
        wait_for(lambda: storescu(site.node_port, sample.files).returncode == 0, 60,
                 "the node to take the sample study", [serve])

        def written_sr() -> Path | None:
            for path in (site.folder / "var" / RESULTS_DIR).rglob("*.dcm"):
                try:
                    head = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                except (InvalidDicomError, OSError, EOFError):  # still being written
                    continue
                if head.get("SOPClassUID") == Comprehensive3DSRStorage:
                    return path
            return None

        wait_for(lambda: written_sr() is not None, 180, "an SR of the sample study", [serve])
        sr = written_sr()
        assert sr is not None
        shutil.copy(sr, site.folder / "SR.dcm")

        token = ""
        for command in _commands(_section("Administration")):
            words = shlex.split(command)
            if words[0] == "export":
                name, value = words[1].split("=", 1)
                site.env[name] = value
                continue
            assert words[0] == "medrega-gateway", command
            if words[1] == "api":
                api = site.background(command, "api")
                processes.append(api)
                wait_for(lambda: _http(f"http://127.0.0.1:{site.api_port}/healthz")[0] == 200, 60,
                         "the API to answer", [api])
                status, page = _http(f"http://127.0.0.1:{site.api_port}/api/v1/findings?study_instance_uid="
                                     f"{sample.study_instance_uid}", token)
                assert status == 200, page
                assert json.loads(page)["items"], "the auditor's token sees no findings of the sample study"
                continue
            done = site.run(command)
            output = done.stdout + done.stderr
            assert "Traceback" not in output, f"{command}\n{output}"
            if words[1] == "status":
                down = [line for line in done.stdout.splitlines() if line.startswith("DOWN")]
                # the example's destination at 10.0.0.10 does not exist here; nothing else may be down
                assert done.returncode == 1 and len(down) == 1 and "destination archive" in down[0], output
                for component in ("node", "queue", "deliveries", "storage", "destination pacs"):
                    assert re.search(rf"^ok\s+{component}\s", done.stdout, re.M), (component, output)
                continue
            assert done.returncode == 0, f"{command}\n{output}"
            if words[1] == "token":
                token = done.stdout.strip().splitlines()[-1].split()[-1]
            if words[1] == "render":
                png = site.folder / words[words.index("--out") + 1]
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", output
        listed = site.run("medrega-gateway dest list")
        assert re.search(r"^archive\s+ARCHIVE\s+10.0.0.10:104\s", listed.stdout, re.M), listed.stdout
        wait_for(lambda: len(pacs.files()) >= 2, 120, "both SRs of the sample study at the PACS", [serve])
    finally:
        for process in reversed(processes):
            process.stop()
