"""Fixtures of the API tests: a migrated database, settings, tokens, the app and a client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.api.app import create_app
from common.db import session_factory
from common.models import AuditEvent
from common.settings import Settings, load_settings
from gateway.tokens import create_token


def make_settings(url: str, data_dir: Path, **api: object) -> Settings:
    return load_settings(environ={}, storage={"data_dir": str(data_dir)}, database={"url": url},
                         api=api)


@dataclass
class Env:
    url: str
    data_dir: Path
    settings: Settings
    admin_token: str
    auditor_token: str

    def session(self) -> Session:
        return session_factory(self.url)()

    def headers(self, role: str = "auditor") -> dict[str, str]:
        token = self.admin_token if role == "admin" else self.auditor_token
        return {"Authorization": f"Bearer {token}"}

    def audit_events(self) -> list[AuditEvent]:
        with self.session() as s:
            return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def _env(url: str, data_dir: Path, **api: object) -> Env:
    with session_factory(url)() as s:
        admin = create_token(s, "alice-admin", "admin")
        auditor = create_token(s, "bob-auditor", "auditor")
        s.commit()
    return Env(url, data_dir, make_settings(url, data_dir, **api), admin, auditor)


@pytest.fixture
def env(sqlite_url: str, tmp_path: Path) -> Env:
    return _env(sqlite_url, tmp_path / "data")


@pytest.fixture
def pg_env(postgres_url: str, tmp_path: Path) -> Env:
    from common.db import upgrade

    upgrade(postgres_url)
    return _env(postgres_url, tmp_path / "data")


@pytest.fixture
def app(env: Env) -> FastAPI:
    return create_app(env.settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
