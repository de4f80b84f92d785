"""``ae``, ``dest`` and ``route`` sub-commands, run through typer like the real CLI."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from gateway.cli.admin import ae_app, dest_app, route_app
from gateway import cli
from tests.peers.dcmtk import storescp


@pytest.fixture
def run(tmp_path, sqlite_url):
    app = typer.Typer()
    app.callback()(cli._root)  # the same --config handling as medrega-gateway
    app.add_typer(ae_app, name="ae")
    app.add_typer(dest_app, name="dest")
    app.add_typer(route_app, name="route")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[database]\nurl = "{sqlite_url}"\n')
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--config", str(config), *args])
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_ae_titles(run):
    assert "any calling AE title may send" in run("ae", "list")
    assert "added calling AE title CT1 (from 10.0.0.0/8)" in run("ae", "add", "CT1", "--host", "10.0.0.0/8")
    assert "already exists" in run("ae", "add", "CT1", code=1)
    assert "not a valid AE title" in run("ae", "add", "WAY_TOO_LONG_AE_TITLE", code=1)
    out = run("ae", "list")
    assert "CT1" in out and "10.0.0.0/8" in out
    run("ae", "remove", "CT1")
    assert "no calling AE" in run("ae", "remove", "CT1", code=1)


def test_destinations_and_c_echo_test(run, tmp_path):
    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        run("dest", "add", "pacs", "PACS", "127.0.0.1", str(pacs.port))
        assert "success" in run("dest", "test", "pacs")
        out = run("dest", "list")
        assert "pacs" in out and f"127.0.0.1:{pacs.port}" in out
    assert "C-ECHO to pacs failed" in run("dest", "test", "pacs", code=1)
    assert "no destination named 'nope'" in run("dest", "test", "nope", code=1)
    assert "out of range" in run("dest", "add", "bad", "BAD", "h", "70000", code=1)
    run("dest", "remove", "pacs")
    assert "no destinations" in run("dest", "list")


def test_routes(run):
    run("dest", "add", "pacs", "PACS", "127.0.0.1", "104")
    run("route", "add", "chest-ct", "--modality", "CT", "--series-description", "*thorax*",
        "--urgent", "--destinations", "pacs", "--order", "5")
    run("route", "add", "no-sc", "--sop-class-uid", "1.2.840.10008.5.1.4.1.1.7", "--action", "ignore")
    assert "unknown destination" in run("route", "add", "x", "--destinations", "nowhere", code=1)
    assert "action must be one of" in run("route", "add", "y", "--action", "delete", code=1)
    lines = run("route", "list").splitlines()
    assert "chest-ct" in lines[0] and "urgent" in lines[0] and "modality=CT" in lines[0]
    assert "no-sc" in lines[1] and "ignore" in lines[1]
    run("route", "remove", "chest-ct")
    assert "chest-ct" not in run("route", "list")


def test_enable_and_disable_each_kind_with_audit(run, sqlite_url):
    """The pages' enable/disable switches on the command line: the row keeps its place, the list
    says it is off, the change is audited under the pages' action names, an unknown name is refused."""
    from sqlalchemy import select

    from common.db import session_scope
    from common.models import AuditEvent

    run("ae", "add", "CT1")
    run("dest", "add", "pacs", "PACS", "127.0.0.1", "104")
    run("route", "add", "ct", "--modality", "CT")
    assert "calling AE title CT1 disabled" in run("ae", "disable", "CT1")
    assert "destination pacs disabled" in run("dest", "disable", "pacs")
    assert "route ct disabled" in run("route", "disable", "ct")
    ae_row = next(line for line in run("ae", "list").splitlines() if line.startswith("CT1"))
    assert ae_row.split()[3] == "no", ae_row
    assert run("dest", "list").splitlines()[1].rstrip().endswith("no")
    assert "(disabled)" in run("route", "list")
    run("ae", "enable", "CT1")
    run("dest", "enable", "pacs")
    run("route", "enable", "ct")
    assert next(line for line in run("ae", "list").splitlines() if line.startswith("CT1")).split()[3] == "yes"
    assert run("dest", "list").splitlines()[1].rstrip().endswith("yes")
    assert "(disabled)" not in run("route", "list")
    assert "no route" in run("route", "disable", "nope", code=1).lower()
    with session_scope(sqlite_url) as session:
        actions = [(e.action, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    switched = [a for a in actions if a[0].endswith(("able"))]
    assert switched == [
        ("admin.calling_ae.disable", "success"), ("admin.destination.disable", "success"),
        ("admin.route.disable", "success"), ("admin.calling_ae.enable", "success"),
        ("admin.destination.enable", "success"), ("admin.route.enable", "success"),
        ("admin.route.disable", "failure"),
    ], actions


def test_names_and_hosts_are_checked_by_every_surface(run):
    """gateway.admin checks names and hosts itself (the pages and the command line took a '/' in a
    name, which then broke the row's links; a host with a newline; 256 characters where 255 fit)."""
    assert "without '/'" in run("dest", "add", "a/b", "PACS", "127.0.0.1", "104", code=1)
    assert "without '/'" in run("route", "add", "ct\x01", code=1)
    assert "host must be" in run("dest", "add", "pacs", "PACS", "bad\nhost", "104", code=1)
    assert "host must be" in run("ae", "add", "CT1", "--host", "h" * 256, code=1)
    assert "description must be" in run("ae", "add", "CT1", "--description", "line\nbreak", code=1)
    assert "no destinations" in run("dest", "list")
    assert "any calling AE title may send" in run("ae", "list")
