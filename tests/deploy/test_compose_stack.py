"""The production stack of docker-compose.yml, built and run here without a registry (issue 18).

With Debian's Docker engine (started here when none runs, stopped again afterwards) and Debian's
``docker-compose`` (v1: no ``--pull``, classic builder):

1. the images are built as the README says: the base image by ``scripts/make-base-images.sh``
   (debootstrap, when Docker does not have it), the Python wheels by
   ``scripts/make-wheelhouse.sh``, then ``docker-compose build`` (cached layers reused);
2. the stack is started with ``deploy/cpu-demo.env`` (CPU worker on recorded answers, Orthanc as
   the PACS), a study is sent with DCMTK's ``storescu`` to the node's published port, and both SRs
   (English and Chinese) are found in Orthanc through its REST API;
3. the stack is taken down (containers and network removed) and started again: the SRs in
   Orthanc, the received instances in the spool, the study, the API token and the audit trail in
   PostgreSQL are still there (named volumes);
4. everything is removed: no container, network or volume of the project is left, and a daemon
   started here is stopped.

The first run on a fresh machine builds everything (several minutes); later runs reuse Docker's
layer cache. Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from sr_writer.readback import read_report
from tests.conftest import REPO, free_port, require_tool
from tests.deploy.docker_engine import docker_engine, engine_answers
from tests.peers.dcmtk import echoscu, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(3000)]

PROJECT = "medregadeploytest"
LOCK = Path("/tmp/medrega-deploy-test.lock")
BUILT_SERVICES = ("migrate", "redis", "postgres", "orthanc")  # one per image (node, api, workers share migrate's)


class Stack:
    """docker-compose (v1, Debian's) on the repository's compose file with deploy/cpu-demo.env."""

    def __init__(self, log: Path) -> None:
        self.ports = {name: free_port() for name in ("DICOM", "API", "ORTHANC_HTTP", "ORTHANC_DICOM")}
        self.env = {**os.environ, **{f"MEDREGA_{name}_PORT": str(port) for name, port in self.ports.items()}}
        self.log = log
        self.base = [require_tool("docker-compose"), "--project-name", PROJECT, "--project-directory", str(REPO),
                     "--file", str(REPO / "docker-compose.yml"), "--env-file", str(REPO / "deploy" / "cpu-demo.env")]

    def run(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([*self.base, *args], check=False, env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"$ docker-compose {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
        assert proc.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
        return proc.stdout

    def script(self, name: str, timeout: float = 1200) -> None:
        proc = subprocess.run([str(REPO / "scripts" / name)], check=False, env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"scripts/{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
        print(proc.stdout.strip())

    def orthanc(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['ORTHANC_HTTP']}{path}", timeout=30) as r:
            return r.read()

    def api(self, path: str, token: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['API']}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def wait_until_up(self, timeout_s: float = 300) -> None:
        """`up -d` returns once the containers start; the node answers C-ECHO a little later."""
        deadline = time.monotonic() + timeout_s
        while echoscu("127.0.0.1", self.ports["DICOM"], called_ae="MEDREGA", timeout=30).returncode != 0:
            assert time.monotonic() < deadline, f"the node did not answer C-ECHO:\n{self.run('logs', '--tail=40')}"
            time.sleep(2)
        while True:
            try:
                self.orthanc("/system")
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['API']}/healthz", timeout=10).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "Orthanc or the API did not answer"
                time.sleep(2)

    def srs_in_orthanc(self, study_uid: str, timeout_s: float) -> dict[str, pydicom.Dataset]:
        """The SRs Orthanc holds for the study, by language code (en / zh), once there are two."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, pydicom.Dataset] = {}
            for orthanc_id in json.loads(self.orthanc("/instances")):
                tags = json.loads(self.orthanc(f"/instances/{orthanc_id}/simplified-tags"))
                if tags.get("Modality") == "SR" and tags.get("StudyInstanceUID") == study_uid:
                    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(self.orthanc(f"/instances/{orthanc_id}/file")))
                    language = read_report(ds).language
                    assert language is not None, f"SR {ds.SOPInstanceUID} names no language"
                    assert language[0] not in found, f"two SRs in {language}"
                    found[language[0]] = ds
            if len(found) >= 2 or time.monotonic() > deadline:
                return found
            time.sleep(3)

    def spool_files(self) -> set[str]:
        out = self.run("exec", "-T", "node", "find", "/var/lib/medrega", "-type", "f", "-name", "*.dcm")
        return set(out.split())


def _timed(label: str, timings: dict[str, float], start: float) -> None:
    timings[label] = round(time.monotonic() - start, 1)
    print(f"deploy test: {label} {timings[label]} s")


@pytest.fixture
def one_stack_at_a_time() -> Iterator[None]:
    """Runs of this test on one machine (several checkouts, one Docker engine) wait for each other:
    they share the project name, the image tags and a daemon that the first of them may stop."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_the_stack_builds_runs_a_study_and_keeps_its_data_across_a_restart(
    tmp_path: Path, one_stack_at_a_time: None
) -> None:
    from gateway.demo.samples import make_sample_study

    sample = make_sample_study(tmp_path / "study")
    stack = Stack(tmp_path / "compose.log")
    timings: dict[str, float] = {}
    with docker_engine(tmp_path / "dockerd.log") as started_daemon:
        stack.run("down", "--volumes", "--remove-orphans")  # what a killed earlier run may have left
        t = time.monotonic()
        stack.script("make-base-images.sh")
        stack.script("make-wheelhouse.sh")
        _timed("base image and wheelhouse", timings, t)
        t = time.monotonic()
        stack.run("build", "--force-rm", *BUILT_SERVICES, timeout=2400)  # no container left by a failed step
        _timed("docker-compose build", timings, t)
        try:
            t = time.monotonic()
            stack.run("up", "--detach")
            stack.wait_until_up()
            _timed("up until C-ECHO answered", timings, t)
            running = set(stack.run("ps", "--services", "--filter", "status=running").split())
            assert running == {"redis", "postgres", "node", "api", "worker-cpu", "orthanc"}, running

            t = time.monotonic()
            storescu("127.0.0.1", stack.ports["DICOM"], [tmp_path / "study"], called_ae="MEDREGA",
                     calling_ae="DEPLOYTEST")
            srs = stack.srs_in_orthanc(sample.study_instance_uid, timeout_s=300)
            _timed("study sent until both SRs were in Orthanc", timings, t)
            assert sorted(srs) == ["en", "zh"], f"Orthanc holds SRs in {sorted(srs)}:\n{stack.run('logs', '--tail=60')}"
            for ds in srs.values():
                assert ds.VerificationFlag == "UNVERIFIED" and ds.SpecificCharacterSet == "ISO_IR 192"
                assert ds.PatientID == sample.patient_id
            zh = read_report(srs["zh"])
            written = [*zh.texts, *(r.label or "" for r in zh.regions), *(r.description or "" for r in zh.regions)]
            assert any("演示用的录制回答" in text for text in written), f"the Chinese SR lost its Chinese text: {written}"

            token_out = stack.run("exec", "-T", "node", "medrega-gateway", "token", "create",
                                  "--role", "auditor", "--name", "deploy-test")
            token = next(word for word in token_out.split() if word.startswith("mrg_"))
            studies = stack.api("/api/v1/studies", token)["items"]
            assert [s["study_instance_uid"] for s in studies] == [sample.study_instance_uid]
            trail = stack.api("/api/v1/audit-events", token)["items"]
            assert {"studies.search"} <= {e["action"] for e in trail}, trail
            spool = stack.spool_files()
            assert len(spool) >= len(sample.files), spool

            # Restart: containers and network removed, named volumes kept.
            t = time.monotonic()
            stack.run("down")
            stack.run("up", "--detach")
            stack.wait_until_up()
            _timed("down and up again", timings, t)
            after = stack.srs_in_orthanc(sample.study_instance_uid, timeout_s=0)
            assert {lang: ds.SOPInstanceUID for lang, ds in after.items()} == \
                {lang: ds.SOPInstanceUID for lang, ds in srs.items()}, "Orthanc lost the SRs"
            assert stack.spool_files() == spool, "the spool volume lost received instances"
            assert [s["study_instance_uid"] for s in stack.api("/api/v1/studies", token)["items"]] == \
                [sample.study_instance_uid], "the database lost the study"
            trail_after = {e["id"]: e for e in stack.api("/api/v1/audit-events", token)["items"]}
            for event in trail:
                assert trail_after.get(event["id"]) == event, f"audit event {event['id']} changed or vanished"
        finally:
            t = time.monotonic()
            stack.run("down", "--volumes", "--remove-orphans")
            _timed("down --volumes", timings, t)
        docker = require_tool("docker")
        for kind in ("container", "network", "volume"):
            args = [docker, kind, "ls", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}"]
            if kind == "container":
                args.insert(3, "--all")
            left = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
            assert not left, f"{kind}s of the stack left behind: {left}"
    if started_daemon is not None:
        assert started_daemon.poll() is not None and not engine_answers(), "the dockerd started here still runs"
    print(f"deploy test timings: {json.dumps(timings)}")
