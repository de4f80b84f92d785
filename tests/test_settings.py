"""Configuration contract: TOML + MEDREGA_<SECTION>__<KEY>, validated once, errors name the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from common.settings import ConfigError, load_settings
from tests.conftest import REPO

EXAMPLE = """
[node]
ae_title = "MEDREGA"
host = "0.0.0.0"
port = 11112
stable_after_s = 30

[storage]
data_dir = "./var"

[database]
url = "sqlite:///./var/gateway.db"

[queue]
broker_url = ""

[model]
backend = "medrega"
path = ""

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_issue_example_loads(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, EXAMPLE), environ={})
    assert settings.node.port == 11112 and settings.node.ae_title == "MEDREGA"
    assert settings.destinations[0].ae_title == "PACS"
    assert settings.embedded_broker and settings.broker_url.startswith("sqla+sqlite:///")
    # A relative data_dir is relative to the config file.
    assert settings.data_dir == (tmp_path / "var").resolve()


def test_environment_overrides_file(tmp_path: Path) -> None:
    env = {"MEDREGA_NODE__PORT": "11113", "MEDREGA_MODEL__BACKEND": "tiny",
           "MEDREGA_DESTINATIONS": '[{"name": "a", "ae_title": "A", "host": "h", "port": 1}]'}
    settings = load_settings(_write(tmp_path, EXAMPLE), environ=env)
    assert settings.node.port == 11113
    assert settings.model.backend == "tiny"
    assert [d.name for d in settings.destinations] == ["a"]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (EXAMPLE.replace("port = 11112", "port = 70000"), {}, "node.port:"),
        (EXAMPLE.replace('backend = "medrega"', 'backend = "gpt"'), {}, "model.backend:"),
        (EXAMPLE + "\n[node2]\nx = 1\n", {}, "node2: unknown setting"),
        (EXAMPLE.replace('ae_title = "PACS"', 'ae_title = "WAY_TOO_LONG_AE_TITLE"'), {}, "destinations.0.ae_title:"),
        (EXAMPLE.replace('name = "pacs"\n', ""), {}, "destinations.0.name: required setting is missing"),
        (EXAMPLE, {"MEDREGA_NODE__STABLE_AFTER_S": "soon"}, "node.stable_after_s:"),
        ("[node\n", {}, "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), environ=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_stops_with_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path, EXAMPLE.replace("port = 4242", 'port = "x"'))
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "config"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medrega-gateway: configuration error: destinations.0.port: Input should be a valid integer, "
        "unable to parse string as an integer"]


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated from the settings; regenerate it after a change."""
    from scripts.config_docs import render

    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc == render(), "run `.venv/bin/python scripts/config_docs.py`"


def _all_settings() -> list[tuple[str, FieldInfo]]:
    from common.settings import Settings

    out: list[tuple[str, FieldInfo]] = []
    for section, field in Settings.model_fields.items():
        annotation = field.annotation  # a section's model, or a list of them (destinations, callers, routes)
        model = typing.get_args(annotation)[0] if typing.get_origin(annotation) is not None else annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), f"{section}: {annotation}"
        out.extend((f"{section}.{key}", f) for key, f in model.model_fields.items())
    return out


def test_every_setting_has_a_description() -> None:
    """Issue 17: each key says what it means, its unit, its allowed values, the base of relative paths."""
    keys = _all_settings()
    assert len(keys) > 50  # the walk reaches every section and list entry
    assert [key for key, f in keys if not (f.description or "").strip()] == []


def test_precedence_overrides_environment_file_defaults(tmp_path: Path) -> None:
    config = _write(tmp_path, EXAMPLE.replace("stable_after_s = 30", "stable_after_s = 7"))
    env = {"MEDREGA_NODE__PORT": "11113"}
    settings = load_settings(config, environ=env, node={"port": 11114})
    assert settings.node.port == 11114  # given to load_settings > environment
    assert load_settings(config, environ=env).node.port == 11113  # environment > file
    assert settings.node.stable_after_s == 7  # file > default (30)
    assert settings.node.ae_title == "MEDREGA" and settings.node.maximum_associations == 16  # defaults


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("MEDREGA_NODE_PORT", "MEDREGA_NODE_PORT: unknown environment variable; did you mean MEDREGA_NODE__PORT?"),
        ("MEDREGA_NODE__PROT", "MEDREGA_NODE__PROT: unknown environment variable; did you mean MEDREGA_NODE__PORT?"),
        ("MEDREGA_MODEL__PATH__X", "MEDREGA_MODEL__PATH__X: unknown environment variable; did you mean "
                                   "MEDREGA_MODEL__PATH?"),
        ("MEDREGA_WHATEVER", "MEDREGA_WHATEVER: unknown environment variable; settings are "
                             "MEDREGA_<SECTION>__<KEY> (docs/configuration.md)"),
    ],
)
def test_unknown_variable_is_an_error_naming_it(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, EXAMPLE), environ={"MEDREGA_NODE__PORT": "1", name: "11113"})
    assert str(info.value) == message


def test_other_variables_are_accepted(tmp_path: Path) -> None:
    from common.settings import OTHER_VARIABLES

    env = {name: "x" for name in OTHER_VARIABLES} | {"MEDREGA_TEST_ANYTHING": "1", "MEDREGA_NODE": '{"port": 5}',
                                                       "OTHER_NODE_PORT": "1"}
    assert load_settings(_write(tmp_path, EXAMPLE), environ=env).node.port == 5


def test_cli_stops_on_unknown_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDREGA_")} | {"MEDREGA_NODE_PORT": "11113"}
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(_write(tmp_path, EXAMPLE)), "config"],
                            capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medrega-gateway: configuration error: MEDREGA_NODE_PORT: unknown environment variable; "
        "did you mean MEDREGA_NODE__PORT?"]


#: Where the repository reads or sets a MEDREGA_ variable: the deployment files wholesale, and the
#: environment look-ups of the Python code.
_DEPLOYMENT_FILES = ("docker-compose.yml", "deploy/Dockerfile", "deploy/cpu-demo.env", "scripts/make-base-images.sh")
_PYTHON_READ = re.compile(r"""(?:environ(?:\.get|\.setdefault)?\(|environ\[|getenv\(|setenv\(|envvar=)\s*["'](MEDREGA_\w+)""")


def test_every_variable_the_repository_uses_is_accepted() -> None:
    """The allow-list (common.settings.OTHER_VARIABLES) covers what the deployment files and the code
    read, so a shell that sets them can run the gateway; a new one must be added there."""
    from common.settings import check_environment

    names: set[str] = set()
    for name in _DEPLOYMENT_FILES:
        names |= set(re.findall(r"MEDREGA_[A-Z0-9_]*[A-Z0-9]", (REPO / name).read_text(encoding="utf-8")))
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        if (REPO / name).is_file():
            names |= set(_PYTHON_READ.findall((REPO / name).read_text(encoding="utf-8")))
    assert {"MEDREGA_BASE_IMAGE", "MEDREGA_CONFIG", "MEDREGA_MODEL__BACKEND", "MEDREGA_TEST_REDIS_URL"} <= names
    for name in sorted(names):
        check_environment({name: "x"})  # raises ConfigError naming a variable that is not accepted
