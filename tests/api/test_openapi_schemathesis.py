"""Property-based tests of every API operation against its OpenAPI document (schemathesis).

Requests are generated from the published schema and sent to the ASGI app with an admin token
(admins may call everything); each response must be a documented status with a body matching
the documented schema, and never a server error. Examples per operation are bounded so the
whole run stays within seconds.

schemathesis' lazy ``from_fixture`` loader does not run under pytest 9 (it sets
``node._nodeid``), so the schema is loaded at collection from an app on its own migrated
SQLite database in a temporary folder, removed when the module's tests are done.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.api.app import create_app
from common.db import session_factory, upgrade

from .conftest import Env, make_settings
from .factories import make_study


def _build() -> tuple[Env, Path]:
    folder = Path(tempfile.mkdtemp(prefix="medrega-schemathesis-"))
    url = f"sqlite:///{folder / 'gateway.db'}"
    upgrade(url)
    from gateway.tokens import create_token

    with session_factory(url)() as s:
        admin = create_token(s, "schemathesis-admin", "admin")
        auditor = create_token(s, "schemathesis-auditor", "auditor")
        make_study(s, folder / "data")
        s.commit()
    # schemathesis' own checks send unknown tokens; they must not make the address wait (429)
    # for the rest of the run (tests/api/test_auth_limits.py covers the wait).
    settings = make_settings(url, folder / "data", auth_failures_allowed=1_000_000)
    return Env(url, folder / "data", settings, admin, auditor), folder


ENV, _FOLDER = _build()
APP = create_app(ENV.settings)
#: Valid requests may still be refused for documented domain reasons: 400 (a cursor that this API
#: did not issue), 404 (no such row), 409 (already exists, state does not allow the action).
#: The admin token is part of the configuration, so that schemathesis knows every request carries
#: it (a case it made "negative" by dropping Authorization is sent with the token all the same).
CONFIG = schemathesis.config.SchemathesisConfig.from_dict({
    "headers": ENV.headers("admin"),
    "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]}},
})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def _remove_folder() -> Iterator[None]:
    yield
    from common.db import make_engine

    make_engine(ENV.url).dispose()
    shutil.rmtree(_FOLDER, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case) -> None:
    case.call_and_validate(headers=ENV.headers("admin"))


def test_openapi_document_declares_bearer_auth() -> None:
    doc = APP.openapi()
    scheme = doc["components"]["securitySchemes"]["ApiToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert len(operations) >= 20
    assert all(op.get("security") == [{"ApiToken": []}] for op in operations)
    assert not [p for p in doc["paths"] if p.startswith("/ui")]
