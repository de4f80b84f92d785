"""docker-compose.yml is valid and says what production needs.

The stack itself is built and started by tests/deploy/test_compose_stack.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO


def _compose_config() -> dict:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "config"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"]
    else:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed: run `make setup`")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_is_valid_and_complete() -> None:
    config = _compose_config()
    services = config["services"]
    assert {"redis", "postgres", "migrate", "node", "worker", "worker-cpu", "api", "orthanc"} <= set(services)
    # Only the one-shot migrate service migrates; the others wait until it has finished.
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("node", "worker", "worker-cpu", "api"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("redis", "postgres", "node"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert {"spool", "pgdata"} <= set(config["volumes"])
    assert services["orthanc"]["profiles"] == ["demo"]
    # The GPU worker only where asked for; the CPU worker runs the stack on a machine without one.
    assert services["worker"]["profiles"] == ["gpu"] and services["worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["worker-cpu"]
    # The configuration file the services mount is in the repository (not created as a folder).
    for name in ("migrate", "node", "worker", "worker-cpu", "api"):
        sources = [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in services[name]["volumes"]]
        config_file = next(s for s in sources if s.endswith("gateway.toml"))
        assert (REPO / "deploy" / "gateway.toml").samefile(config_file), config_file
    # Every image is built here from deploy/, on the base image given as a build argument.
    for name in ("redis", "postgres", "migrate", "orthanc"):
        assert "BASE_IMAGE" in services[name]["build"]["args"], name
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
    # The same TOML/env contract as everywhere else.
    env = services["node"]["environment"]
    assert env["MEDREGA_QUEUE__BROKER_URL"].startswith("redis://")
    assert env["MEDREGA_DATABASE__URL"].startswith("postgresql://")
