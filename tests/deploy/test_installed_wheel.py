"""The built wheel works when installed, not only in a checkout (issue 18).

The wheel is built from a copy of the tree's files (tracked and new, never ignored ones), installed
into a fresh virtual environment in a temporary folder outside the checkout, and run from there
with no PYTHONPATH: ``db upgrade`` (Alembic scripts inside the package), ``serve`` answering a
C-ECHO from DCMTK's ``echoscu``, and the API serving a page and its stylesheet (templates and
static files inside the package); plans, prompts and the finding code table load from the
installed package.

The dependencies are not downloaded again (torch alone is ~1 GB installed): the wheel is
installed with ``--no-deps``, and a ``.pth`` file puts the project venv's site-packages on the
new environment's path, *after* its own site-packages. A ``.pth`` line only appends a folder:
the ``.pth`` files inside that folder (the editable install of the checkout among them) are not
run, so ``gateway`` and its siblings can only come from the wheel, which the test asserts.
``pip check`` then verifies that the dependencies declared by the wheel (pyproject.toml's
ranges) are met by the locked versions of requirements.txt.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.peers.dcmtk import echoscu, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _tree_copy(dest: Path) -> Path:
    """The files git would commit now (tracked and untracked, not ignored), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv outside the checkout with the built wheel installed; returns (venv, env)."""
    root = tmp_path_factory.mktemp("installed-wheel")
    assert not root.resolve().is_relative_to(REPO.resolve())
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MEDREGA_")}
    src = _tree_copy(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(src)], env, root)
    (wheel,) = (root / "dist").glob("medrega_gateway-*.whl")
    venv = root / "venv"
    _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], env, root)  # type: ignore[attr-defined]  # CPython's, not in typeshed
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run([*pip, "install", "--no-deps", "--no-index", str(wheel)], env, root)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   env, root).stdout.strip()
    (Path(purelib) / "zz_project_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    _run([*pip, "check"], env, root)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, env


def test_the_installed_package_holds_its_code_and_data(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    probe = """
import json, sys
import common, gateway, dicom_node, workflow, sender, workers, model, sr_writer, migrations
from common.db import MIGRATIONS_DIR
from model.plans import load_plans, PLANS_PATH
from model.prompts import prompt_library, PROMPTS_PATH
from sr_writer.coding import lookup_finding_code
from gateway.api import ui, app
load_plans(); prompt_library()
print(json.dumps({
    "modules": {m.__name__: m.__file__
                for m in (common, gateway, dicom_node, workflow, sender, workers, model, sr_writer, migrations)},
    "data": [str(MIGRATIONS_DIR / "versions"), str(PLANS_PATH), str(PROMPTS_PATH),
             str(app._STATIC / "style.css"), ui.templates.env.get_template("login.html").filename],
    "code": lookup_finding_code("pleural effusion") is not None,
}))
"""
    out = json.loads(_run([str(venv / "bin" / "python"), "-c", probe], env, tmp_path).stdout)
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    for name, file in out["modules"].items():
        assert Path(file).is_relative_to(site_packages), f"{name} imported from {file}, not from the installed wheel"
    for path in out["data"]:
        assert Path(path).is_relative_to(site_packages) and Path(path).exists(), path
    assert out["code"], "the finding code table of the installed package maps no label"


def test_the_installed_command_migrates_serves_and_answers_c_echo(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    node_port, api_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""[node]
ae_title = "MEDREGA"
host = "127.0.0.1"
port = {node_port}
metrics_port = 0

[storage]
data_dir = "var"

[api]
port = {api_port}

[model]
backend = "tiny"
""", encoding="utf-8")
    command = str(venv / "bin" / "medrega-gateway")
    out = _run([command, "--config", str(config), "db", "upgrade"], env, tmp_path).stdout
    current = _run([command, "--config", str(config), "db", "current"], env, tmp_path)
    assert "head" in current.stdout + current.stderr, f"db current after upgrade: {current.stdout}{current.stderr}{out}"
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen([command, "--config", str(config), "serve"], env=env, cwd=tmp_path,
                                 stdout=log, stderr=subprocess.STDOUT)
        api = subprocess.Popen([command, "--config", str(config), "api"], env=env, cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", node_port, timeout=120, process=serve)
            echo = echoscu("127.0.0.1", node_port, called_ae="MEDREGA")
            assert echo.returncode == 0, f"C-ECHO to the installed node failed: {echo.stdout}{echo.stderr}"
            wait_for_port("127.0.0.1", api_port, timeout=120, process=api)
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ui/login", timeout=30) as page:
                assert page.status == 200 and "<form" in page.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/ui/static/style.css", timeout=30) as css:
                assert css.status == 200 and css.read()
        finally:
            for process in (serve, api):
                process.terminate()
            for process in (serve, api):
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()
