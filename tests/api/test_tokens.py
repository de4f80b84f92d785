"""API tokens: stored hashed, shown once, revocable; the token CLI."""

from __future__ import annotations

import hashlib

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from gateway.cli.api import api_command, token_app
from gateway.cli.base import _root
from common.db import session_factory
from common.models import ApiToken
from gateway.tokens import (
    TokenExistsError,
    TokenNotFoundError,
    UnknownRoleError,
    InvalidTokenNameError,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)


def test_token_is_stored_only_as_its_sha256(sqlite_url: str) -> None:
    with session_factory(sqlite_url)() as s:
        token = create_token(s, "carol", "auditor")
        s.commit()
        row = s.scalars(select(ApiToken).where(ApiToken.name == "carol")).one()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in {row.name, row.role, row.token_hash}
        assert len(token) > 40 and token.startswith("mrg_")
        carol = authenticate(s, token)
        assert carol is not None and carol.name == "carol"
        assert authenticate(s, token + "x") is None
        assert authenticate(s, "") is None and authenticate(s, None) is None
        assert authenticate(s, row.token_hash) is None  # the hash is not a credential


def test_revoked_token_no_longer_authenticates_and_name_is_not_reused(sqlite_url: str) -> None:
    with session_factory(sqlite_url)() as s:
        token = create_token(s, "dave", "admin")
        first = revoke_token(s, "dave").revoked_at
        assert revoke_token(s, "dave").revoked_at == first
        assert authenticate(s, token) is None
        with pytest.raises(TokenExistsError):
            create_token(s, "dave", "admin")
        with pytest.raises(TokenNotFoundError):
            revoke_token(s, "nobody")
        with pytest.raises(UnknownRoleError):
            create_token(s, "erin", "root")
        with pytest.raises(InvalidTokenNameError):
            create_token(s, "bad name\n", "admin")
        assert [t.name for t in list_tokens(s)] == ["dave"]


def _cli() -> typer.Typer:
    """The main command as the lead registers these sub-commands on it."""
    app = typer.Typer()
    app.callback()(_root)
    app.add_typer(token_app, name="token")
    app.command("api")(api_command)
    return app


def test_token_cli_create_list_revoke(sqlite_url: str, tmp_path) -> None:
    runner = CliRunner()
    env = {"MEDREGA_DATABASE__URL": sqlite_url, "MEDREGA_STORAGE__DATA_DIR": str(tmp_path)}
    result = runner.invoke(_cli(), ["token", "create", "--role", "auditor", "--name", "frank"],
                           env=env)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    with session_factory(sqlite_url)() as s:
        found = authenticate(s, token)
        assert found is not None and found.role == "auditor"

    listed = runner.invoke(_cli(), ["token", "list"], env=env)
    assert listed.exit_code == 0 and "frank\tauditor" in listed.stdout
    assert token not in listed.stdout

    dup = runner.invoke(_cli(), ["token", "create", "--role", "auditor", "--name", "frank"], env=env)
    assert dup.exit_code == 2 and "already exists" in dup.stderr

    revoked = runner.invoke(_cli(), ["token", "revoke", "frank"], env=env)
    assert revoked.exit_code == 0, revoked.output
    with session_factory(sqlite_url)() as s:
        assert authenticate(s, token) is None


def test_token_cli_refuses_a_database_that_is_behind(tmp_path) -> None:
    """An empty database gets the advice; one behind the code is never migrated by `api` either
    (only an empty embedded one is created by `serve`/`api`, see tests/test_cli_startup.py)."""
    from common.db import upgrade

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    env = {"MEDREGA_DATABASE__URL": f"sqlite:///{tmp_path / 'empty.db'}",
           "MEDREGA_STORAGE__DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(_cli(), ["token", "list"], env=env)
    assert result.exit_code == 3 and "db upgrade" in result.stderr
    upgrade(url, "0001")
    behind = {**env, "MEDREGA_DATABASE__URL": url}
    served = CliRunner().invoke(_cli(), ["api"], env=behind)
    assert served.exit_code == 3 and "db upgrade" in served.stderr
