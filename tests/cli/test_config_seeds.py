"""The config file seeds destinations, callers and routes once: what an administrator removed or
changed stays so at the next start (``serve`` seeds at every start), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from common.db import session_scope, upgrade
from common.models import CallingAE, ConfigSeed, Destination, Route
from common.settings import Settings, load_settings
from gateway import admin


def _settings(tmp_path: Path, url: str) -> Settings:
    return load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")}, database={"url": url},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.10", "port": 104},
                                       {"name": "archive", "ae_title": "ARCH", "host": "10.0.0.11", "port": 104}],
                         callers=[{"ae_title": "CT1"}],
                         routes=[{"name": "ct", "modality": "CT"}])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_removed_or_changed_seed_stays_so(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    settings = _settings(tmp_path, url)
    with session_scope(url) as session:
        # an administrator added "archive" before the config named it: theirs is kept
        admin.add_destination(session, "archive", "MINE", "10.9.9.9", 11112)
    with session_scope(url) as session:
        added = admin.seed_from_settings(session, settings)
    assert added == ["destination pacs", "calling AE CT1", "route ct"]
    with session_scope(url) as session:
        assert admin.get_destination(session, "archive").ae_title == "MINE"
        admin.remove_destination(session, "pacs")
        admin.remove_calling_ae(session, "CT1")
        admin.update_route(session, "ct", modality="MR")
    with session_scope(url) as session:  # the next start
        assert admin.seed_from_settings(session, settings) == []
    with session_scope(url) as session:
        assert session.scalars(select(Destination.name)).all() == ["archive"]
        assert session.scalars(select(CallingAE)).all() == []
        assert [r.modality for r in session.scalars(select(Route))] == ["MR"]
        assert sorted((s.kind, s.name) for s in session.scalars(select(ConfigSeed))) == [
            ("calling_ae", "CT1"), ("destination", "archive"), ("destination", "pacs"), ("route", "ct")]
    # an entry new in the config file is seeded at the next start
    more = load_settings(environ={}, storage={"data_dir": str(tmp_path / "data")}, database={"url": url},
                         routes=[{"name": "ct", "modality": "CT"}, {"name": "mr", "modality": "MR"}])
    with session_scope(url) as session:
        assert admin.seed_from_settings(session, more) == ["route mr"]


def test_the_upgrade_counts_existing_rows_as_seeded(tmp_path: Path) -> None:
    """An installation upgraded to 0010: its rows are the administrator's, a removal sticks."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    upgrade(url, "0009")
    with session_scope(url) as session:
        admin.add_destination(session, "pacs", "PACS", "10.0.0.10", 104)
    upgrade(url)
    with session_scope(url) as session:
        assert [(s.kind, s.name) for s in session.scalars(select(ConfigSeed))] == [("destination", "pacs")]
        admin.remove_destination(session, "pacs")
    with session_scope(url) as session:
        assert admin.seed_from_settings(session, _settings(tmp_path, url)) == [
            "destination archive", "calling AE CT1", "route ct"]
