"""Fixtures for the DICOM node: settings on a temp data folder, a running StorageSCP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from common.settings import Settings, load_settings

if TYPE_CHECKING:
    from dicom_node.scp import StorageSCP

NODE_AE = "MEDREGA"


def make_settings(data_dir: Path, database_url: str | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings for tests: ephemeral port on loopback, short timeouts, small disk floor."""
    overrides: dict[str, Any] = {
        "storage": {"data_dir": str(data_dir)},
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": 0, "minimum_free_disk_mb": 1,
                 "acse_timeout_s": 10, "dimse_timeout_s": 20, "network_timeout_s": 20,
                 "processes": 1},  # test_processes.py covers several; e2e tests run the default
        "sender": {"backoff_initial_s": 1, "backoff_max_s": 8, "retries": 2},
    }
    if database_url:
        overrides["database"] = {"url": database_url}
    for key, values in sections.items():
        overrides[key] = {**overrides.get(key, {}), **values}
    return load_settings(environ={}, **overrides)


@pytest.fixture
def settings_factory(tmp_path: Path, sqlite_url: str) -> Callable[..., Settings]:
    """Build settings for the migrated SQLite database of this test; keyword sections override."""

    def factory(**sections: dict[str, Any]) -> Settings:
        return make_settings(tmp_path / "data", sqlite_url, **sections)

    return factory


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@contextlib.contextmanager
def running_node(settings: Settings) -> Iterator["StorageSCP"]:
    """A StorageSCP listening for the duration of the block."""
    from dicom_node.scp import StorageSCP

    scp = StorageSCP(settings)
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture
def node(settings: Settings) -> Iterator["StorageSCP"]:
    with running_node(settings) as scp:
        yield scp
