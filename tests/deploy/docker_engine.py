"""A Docker engine for the deployment test: the running one, or ``dockerd`` started and stopped here.

Debian's ``docker.io`` (installed by ``make setup``) starts in a second or two. When this module
started the daemon it stops it again and removes the network links it made (``docker0``), so the
machine is left as it was found; images stay in Docker's storage (/var/lib/docker) as the build
cache of the next run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require_tool

__all__ = ["DockerEngineError", "docker_engine", "engine_answers"]

_NET = Path("/sys/class/net")


class DockerEngineError(RuntimeError):
    """dockerd could not be started, or did not stop."""


def engine_answers() -> bool:
    """Whether a Docker engine answers on the default socket."""
    info = subprocess.run([require_tool("docker"), "info"], capture_output=True, timeout=60, check=False)
    return info.returncode == 0


@contextlib.contextmanager
def docker_engine(log: Path, start_timeout_s: float = 60.0) -> Iterator[subprocess.Popen[bytes] | None]:
    """Yield the dockerd process started here (None when an engine was already running)."""
    if engine_answers():
        yield None
        return
    if os.geteuid() != 0:
        raise DockerEngineError("no Docker engine runs and only root can start dockerd")
    links_before = set(os.listdir(_NET))
    with open(log, "ab") as out:
        daemon = subprocess.Popen([require_tool("dockerd"), "--host", "unix:///var/run/docker.sock"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise DockerEngineError(f"dockerd did not start (exit {daemon.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield daemon
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        for link in sorted(set(os.listdir(_NET)) - links_before):
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
