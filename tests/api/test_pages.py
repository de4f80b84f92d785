"""The web pages through the real application (issue 17): studies, audit log, health,
destinations with a real C-ECHO (DCMTK storescp), edits, confirmed removals, retrying deliveries,
the styled error page for every refusal, 422 for invalid filters, CSV with a byte-order mark and
``/docs`` from the project's own files."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from common.models import (
    AuditEvent,
    CallingAE,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Destination,
    Route,
    Study,
    StudyState,
)
from gateway.api import routes_findings, ui_pages
from gateway.api.export import UTF8_BOM
from gateway.api.ui import COOKIE_NAME, PAGE_SIZE, csrf_value

from ..peers.dcmtk import storescp
from .conftest import Env
from .factories import BASE_TIME, make_study


def _browser(app: FastAPI, token: str | None, **kwargs: object) -> TestClient:
    client = TestClient(app, **kwargs)  # type: ignore[arg-type,unused-ignore]  # TestClient's own keywords, passed on
    if token:
        client.cookies.set(COOKIE_NAME, token)
    return client


def _bare_study(s, n: int, *, state: StudyState = StudyState.RECEIVING,
                ae: str = "MR_ROOM_2") -> Study:
    """A study as the node records it on arrival: no job, no findings."""
    t = BASE_TIME - dt.timedelta(days=30, minutes=n)
    row = Study(study_instance_uid=generate_uid(), calling_ae_title=ae, state=state, version=0,
                first_received_at=t, last_received_at=t, study_description=f"bare {n}")
    s.add(row)
    s.flush()
    return row


def _last(env: Env, action: str | None = None) -> AuditEvent:
    return [e for e in env.audit_events() if action is None or e.action == action][-1]


class _Forms(HTMLParser):
    """Inputs of a page's forms, with the ids that labels point to."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.label_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"] or "")
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.inputs.append({**a, "_wrapped": "yes" if self.label_depth else None})

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.label_depth -= 1


def _assert_labelled(html: str) -> int:
    forms = _Forms()
    forms.feed(html)
    for field in forms.inputs:
        assert "placeholder" not in field, field
        assert field["_wrapped"] or field.get("id") in forms.label_for, f"no label for {field}"
    return len(forms.inputs)


# -- studies ------------------------------------------------------------------------------------

def test_studies_page_lists_every_study_with_state_jobs_and_deliveries(app: FastAPI, env: Env) -> None:
    with env.session() as s:
        done = make_study(s, env.data_dir, calling_ae_title="CR_ROOM_1")
        failed = make_study(s, env.data_dir, calling_ae_title="CT_SCANNER", modality="CT",
                            delivery_state=DeliveryState.FAILED)
        bare = _bare_study(s, 1)
        s.commit()
        uids = (done.study.study_instance_uid, failed.study.study_instance_uid,
                bare.study_instance_uid)
    with _browser(app, env.auditor_token) as c:
        r = c.get("/ui/studies")
        assert r.status_code == 200
        for uid in uids:
            assert f'href="/ui/studies/{uid}"' in r.text
        # The study without findings or job is there, with its state.
        row = re.search(rf"<tr>\s*<td>[^<]*</td>\s*<td class=\"uid\"><a class=\"study-link\" "
                        rf"href=\"/ui/studies/{bare.study_instance_uid}\".*?</tr>", r.text, re.S)
        assert row and "receiving" in row.group(0) and ">none<" in row.group(0).replace("none</td>", ">none<")
        assert "v1 delivered" in r.text and "2 failed" in r.text and "2 sent" in r.text
        assert "Doe^Jane" not in r.text  # an auditor sees no patient identifiers
        assert _last(env).action == "studies.search" and _last(env).rows == 3

        only_ct = c.get("/ui/studies", params={"modality": "ct"}).text
        assert uids[1] in only_ct and uids[0] not in only_ct and uids[2] not in only_ct
        receiving = c.get("/ui/studies", params={"state": "receiving"}).text
        assert uids[2] in receiving and uids[0] not in receiving
        by_ae = c.get("/ui/studies", params={"calling_ae_title": "CR_ROOM_1"}).text
        assert uids[0] in by_ae and uids[1] not in by_ae
        since = (BASE_TIME - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        recent = c.get("/ui/studies", params={"received_from": since}).text
        assert uids[0] in recent and uids[2] not in recent
        assert json.loads(_last(env).query or "")["filters"] == {
            "received_from": (BASE_TIME - dt.timedelta(days=1)).isoformat()}

        for bad in ({"state": "lost"}, {"received_from": "yesterday"}, {"colour": "red"},
                    {"cursor": "!!"}):
            r = c.get("/ui/studies", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.headers["content-type"].startswith("text/html")
            assert 'class="error"' in r.text


def test_studies_page_is_paginated(app: FastAPI, env: Env) -> None:
    with env.session() as s:
        uids = [_bare_study(s, n).study_instance_uid for n in range(PAGE_SIZE + 3)]
        s.commit()
    with _browser(app, env.auditor_token) as c:
        first = c.get("/ui/studies").text
        next_url = re.search(r'<a href="([^"]+)" id="next">', first)
        assert next_url
        second = c.get(next_url.group(1).replace("&amp;", "&")).text
    assert sum(u in first for u in uids) == PAGE_SIZE and 'id="first"' not in first
    assert sum(u in second for u in uids) == 3 and 'id="next"' not in second and 'id="first"' in second
    assert not {u for u in uids if u in first} & {u for u in uids if u in second}


# -- audit log ----------------------------------------------------------------------------------

def test_audit_page_filters_and_is_audited(app: FastAPI, env: Env) -> None:
    with _browser(app, env.admin_token) as admin:
        admin.get("/ui/studies")
    with _browser(app, env.auditor_token) as c:
        r = c.get("/ui/audit", params={"actor": "alice-admin"})
        assert r.status_code == 200
        rows = re.findall(r'<tr class="outcome-[a-z]+">(.*?)</tr>', r.text, re.S)
        assert rows and all("<td>alice-admin</td>" in row for row in rows)
        assert any("studies.search" in row for row in rows)
        event = _last(env)
        assert (event.actor, event.action, event.rows) == ("bob-auditor", "audit.search", len(rows))
        assert json.loads(event.query or "")["filters"] == {"actor": "alice-admin"}

        none = c.get("/ui/audit", params={"action": "studies.search", "at_to": "2000-01-01T00:00"})
        assert "No events match." in none.text
        assert c.get("/ui/audit", params={"at_from": "not-a-time"}).status_code == 422
        assert c.get("/ui/audit", params={"who": "x"}).status_code == 422

        exported = c.get("/ui/audit/export", params={"format": "csv", "action": "audit.search"})
        assert exported.content.startswith(UTF8_BOM)


# -- health -------------------------------------------------------------------------------------

def test_health_page_shows_node_broker_workers_model_queue_and_storage(app: FastAPI, env: Env) -> None:
    with env.session() as s:
        make_study(s, env.data_dir, delivery_state=DeliveryState.FAILED)
        s.commit()
    with _browser(app, env.auditor_token) as c:
        r = c.get("/ui/health")
    assert r.status_code == 200
    cells = dict(re.findall(r'<th scope="row">([^<]+)</th>\s*<td class="[^"]+">(ok|DOWN)</td>', r.text))
    # No node runs in this test: its C-ECHO check says so.
    assert cells["node"] == "DOWN" and "nothing accepts connections" in r.text
    assert cells["database"] == "ok" and cells["broker"] == "ok" and cells["workers"] == "ok"
    # The default backend is MedRegA with no checkpoint here: DOWN, with how to get one.
    assert cells["model"] == "DOWN" and "medrega-gateway model convert" in r.text
    assert cells["queue"] == "ok" and cells["storage"] == "ok"
    assert cells["deliveries"] == "DOWN" and "0 due, 0 waiting for a retry, 2 failed" in r.text
    assert "GB free" in r.text and "spool 1 file(s)" in r.text
    assert _last(env).action == "status.read"


# -- destinations, callers, routes --------------------------------------------------------------

def test_destination_echo_edit_disable_and_confirmed_removal(app: FastAPI, env: Env,
                                                            tmp_path: Path) -> None:
    csrf = csrf_value(env.admin_token)
    with _browser(app, env.admin_token) as c, storescp(tmp_path / "scp", ae_title="PACS1") as scp:
        page = c.get("/ui/admin/destinations")
        assert page.status_code == 200 and _assert_labelled(page.text) >= 6
        r = c.post("/ui/admin/destinations", data={
            "name": "pacs", "ae_title": "PACS1", "host": "127.0.0.1", "port": str(scp.port),
            "send": "sr", "csrf": csrf})
        assert r.status_code == 200 and "destination pacs added" in r.text

        # C-ECHO: a real association with storescp, its status on the page.
        r = c.post("/ui/admin/destinations/pacs/echo", data={"csrf": csrf})
        assert f"C-ECHO pacs (PACS1@127.0.0.1:{scp.port}): status 0x0000 (Success)" in r.text
        assert _last(env, "admin.destination.echo").outcome == "success"

        # Edit: the port of a peer that is not there; C-ECHO now fails with the reason.
        edit = c.get("/ui/admin/destinations/pacs/edit")
        assert f'value="{scp.port}"' in edit.text and _assert_labelled(edit.text) == 5
        closed = scp.port + 1 if scp.port < 65535 else scp.port - 1
        r = c.post("/ui/admin/destinations/pacs/edit", data={
            "ae_title": "PACS1", "host": "127.0.0.1", "port": str(closed), "send": "sr+gsps",
            "tls": "true", "csrf": csrf})
        assert "destination pacs changed" in r.text
        with env.session() as s:
            row = s.scalar(select(Destination).where(Destination.name == "pacs"))
            assert row is not None and (row.port, row.send, row.tls) == (closed, "sr+gsps", True)
        c.post("/ui/admin/destinations/pacs/edit", data={
            "ae_title": "PACS1", "host": "127.0.0.1", "port": str(closed), "send": "sr",
            "csrf": csrf})
        r = c.post("/ui/admin/destinations/pacs/echo", data={"csrf": csrf})
        assert "C-ECHO pacs" in r.text and "failed" in r.text and 'class="error"' in r.text
        assert _last(env, "admin.destination.echo").outcome == "failure"

        r = c.post("/ui/admin/destinations/pacs/disable", data={"csrf": csrf})
        assert "destination pacs disabled" in r.text
        assert re.search(r'data-destination="pacs">.*?<td class="enabled">no</td>', r.text, re.S)
        assert ">Enable</button>" in r.text
        with env.session() as s:
            assert not s.scalar(select(Destination.enabled).where(Destination.name == "pacs"))
        c.post("/ui/admin/destinations/pacs/enable", data={"csrf": csrf})
        with env.session() as s:
            assert s.scalar(select(Destination.enabled).where(Destination.name == "pacs"))

        # Removal is confirmed on a page of its own (a POST form, no script).
        confirm = c.get("/ui/admin/destinations/pacs/remove")
        assert confirm.status_code == 200
        assert re.search(r'<form method="post" action="/ui/admin/destinations/pacs/remove"',
                         confirm.text)
        with env.session() as s:
            assert s.scalar(select(Destination).where(Destination.name == "pacs")) is not None
        r = c.post("/ui/admin/destinations/pacs/remove", data={"csrf": csrf})
        assert "destination pacs removed" in r.text
    actions = [e.action for e in env.audit_events() if e.actor == "alice-admin"]
    for action in ("admin.destination.add", "admin.destination.update", "admin.destination.disable",
                   "admin.destination.enable", "admin.destination.remove"):
        assert action in actions
    with env.session() as s:
        assert s.scalar(select(Destination).where(Destination.name == "pacs")) is None


def test_callers_and_routes_are_edited_and_removed_after_confirmation(app: FastAPI, env: Env) -> None:
    csrf = csrf_value(env.admin_token)
    with _browser(app, env.admin_token) as c:
        c.post("/ui/admin/destinations", data={"name": "pacs", "ae_title": "PACS", "host": "h",
                                                "port": "104", "csrf": csrf})
        page = c.get("/ui/admin/calling-aes")
        assert _assert_labelled(page.text) == 4
        c.post("/ui/admin/calling-aes", data={"ae_title": "CT1", "csrf": csrf})
        edit = c.get("/ui/admin/calling-aes/CT1/edit")
        assert _assert_labelled(edit.text) == 3
        r = c.post("/ui/admin/calling-aes/CT1/edit", data={
            "host": "10.1.2.0/24", "description": "CT room 1", "destinations": "pacs",
            "csrf": csrf})
        assert "calling AE title CT1 changed" in r.text
        refused = c.post("/ui/admin/calling-aes/CT1/edit", data={"destinations": "nowhere",
                                                                  "csrf": csrf})
        assert "unknown destination(s): nowhere" in refused.text
        with env.session() as s:
            caller = s.scalar(select(CallingAE).where(CallingAE.ae_title == "CT1"))
            assert caller is not None and (caller.host, caller.description, caller.destinations) == (
                "10.1.2.0/24", "CT room 1", ["pacs"])

        page = c.get("/ui/admin/routes")
        assert _assert_labelled(page.text) == 9
        c.post("/ui/admin/routes", data={"name": "ct", "modality": "CT", "csrf": csrf})
        edit = c.get("/ui/admin/routes/ct/edit")
        assert _assert_labelled(edit.text) == 8
        r = c.post("/ui/admin/routes/ct/edit", data={
            "order": "5", "modality": "ct", "action": "store", "urgent": "true",
            "destinations": "pacs", "csrf": csrf})
        assert "route ct changed" in r.text
        with env.session() as s:
            route = s.scalar(select(Route).where(Route.name == "ct"))
            assert route is not None
            assert (route.order, route.modality, route.action, route.urgent, route.destinations) == (
                5, "CT", "store", True, ["pacs"])

        # Enable / disable, as for destinations.
        for kind, name, model, column in (("calling-aes", "CT1", CallingAE, CallingAE.ae_title),
                                          ("routes", "ct", Route, Route.name)):
            r = c.post(f"/ui/admin/{kind}/{name}/disable", data={"csrf": csrf})
            assert f"{name} disabled" in r.text and ">Enable</button>" in r.text
            with env.session() as s:
                assert s.scalar(select(model.enabled).where(column == name)) is False
            r = c.post(f"/ui/admin/{kind}/{name}/enable", data={"csrf": csrf})
            assert f"{name} enabled" in r.text
            with env.session() as s:
                assert s.scalar(select(model.enabled).where(column == name)) is True

        for kind, name in (("calling-aes", "CT1"), ("routes", "ct")):
            confirm = c.get(f"/ui/admin/{kind}/{name}/remove")
            assert f'action="/ui/admin/{kind}/{name}/remove"' in confirm.text
            assert "removed" in c.post(f"/ui/admin/{kind}/{name}/remove", data={"csrf": csrf}).text
    actions = [e.action for e in env.audit_events()]
    for action in ("admin.calling_ae.update", "admin.route.update", "admin.calling_ae.remove",
                   "admin.route.remove", "admin.calling_ae.disable", "admin.calling_ae.enable",
                   "admin.route.disable", "admin.route.enable"):
        assert action in actions
    assert [e.outcome for e in env.audit_events() if e.action == "admin.calling_ae.update"] == [
        "success", "failure"]


def test_retrying_deliveries_show_state_next_attempt_and_last_error(app: FastAPI, env: Env) -> None:
    due = dt.datetime(2026, 3, 9, 10, 30, 5, tzinfo=dt.timezone.utc)
    with env.session() as s:
        rows = make_study(s, env.data_dir, delivery_state=DeliveryState.PENDING)
        dl = rows.deliveries[0]
        dl.attempts, dl.next_attempt_at = 3, due
        s.add(DeliveryAttempt(delivery_id=dl.id, at=due - dt.timedelta(minutes=1),
                              error="connection refused by 127.0.0.1:4242 (ECONNREFUSED)"))
        s.add(Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=4242))
        s.commit()
        uid, dl_id = rows.study.study_instance_uid, dl.id
    for token in (env.auditor_token, env.admin_token):
        with _browser(app, token) as c:
            study = c.get(f"/ui/studies/{uid}").text
            row = re.search(rf'<tr data-delivery="{dl_id}">.*?</tr>', study, re.S)
            assert row, study
            assert "retrying" in row.group(0) and "2026-03-09 10:30:05" in row.group(0)
            assert "ECONNREFUSED" in row.group(0)
    with _browser(app, env.admin_token) as c:
        page = c.get("/ui/admin/destinations").text
    row = re.search(rf'<tr data-delivery="{dl_id}">.*?</tr>', page, re.S)
    assert row and "retrying" in row.group(0) and "2026-03-09 10:30:05" in row.group(0)
    assert "2 retrying" in page  # both SRs (en, zh) of the study wait for a retry


# -- refusals -----------------------------------------------------------------------------------

def test_every_refusal_of_a_page_is_the_styled_error_page(app: FastAPI, env: Env,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def styled(r, code: int) -> str:
        assert r.status_code == code, r.text
        assert r.headers["content-type"].startswith("text/html"), r.headers
        assert '<link rel="stylesheet" href="/ui/static/style.css">' in r.text
        return r.text

    with _browser(app, env.auditor_token) as c:
        text = styled(c.get("/ui/admin"), 403)
        assert "Not allowed" in text and "administrator" in text and "Log out" in text
        for path in ("/ui/admin/destinations", "/ui/admin/routes/x/remove"):
            styled(c.get(path), 403)
        assert "Not found" in styled(c.get("/ui/no-such-page"), 404)
        styled(c.get(f"/ui/studies/{generate_uid()}"), 404)
        assert "language" in styled(c.get("/ui/findings", params={"language": "fr"}), 422)
        assert "langauge" in styled(c.get("/ui/findings", params={"langauge": "zh"}), 422)
        styled(c.get("/ui/findings/export", params={"language": "fr"}), 422)
        styled(c.get("/ui/findings/export", params={"bom": "maybe"}), 422)
        styled(c.post("/ui/admin/destinations", data={"name": "x"}), 403)
    with _browser(app, None) as c:
        text = styled(c.post("/ui/login", data={"token": "mrg_wrong"}), 401)
        assert "not valid" in text
    with _browser(app, env.admin_token) as c:
        text = styled(c.post("/ui/admin/destinations",
                             data={"name": "x", "csrf": csrf_value(env.admin_token)}), 422)
        # every field the form lacks is named, in the form's order
        assert "ae_title: Field required; host: Field required; port: Field required" in text
        for path in ("/ui/admin/destinations/nowhere/edit", "/ui/admin/calling-aes/NOWHERE/edit",
                     "/ui/admin/routes/nowhere/edit"):
            assert "nowhere" in styled(c.get(path), 404).lower()
        styled(c.post("/ui/admin/destinations/x/echo", data={"csrf": "forged"}), 403)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(ui_pages, "list_studies", broken)
    monkeypatch.setattr(routes_findings, "list_studies", broken)
    with _browser(app, env.auditor_token, raise_server_exceptions=False) as c:
        text = styled(c.get("/ui/studies"), 500)
        assert "Server error" in text and "database on fire" not in text
    # The API keeps answering JSON.
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/api/v1/studies", headers=env.headers()).json() == {"detail": "Internal Server Error"}


def test_throttled_page_is_the_styled_429(env: Env) -> None:
    from gateway.api.app import create_app
    from .conftest import make_settings

    app = create_app(make_settings(env.url, env.data_dir, auth_failures_allowed=1,
                                   auth_failure_delay_s=60))
    with _browser(app, None) as c:
        c.post("/ui/login", data={"token": "mrg_bad1"})
        c.post("/ui/login", data={"token": "mrg_bad2"})
        r = c.post("/ui/login", data={"token": env.auditor_token})
    assert r.status_code == 429 and r.headers["content-type"].startswith("text/html")
    assert int(r.headers["Retry-After"]) > 0 and "Too many attempts" in r.text


def test_api_refuses_invalid_filter_values(client: TestClient, env: Env) -> None:
    r = client.get("/api/v1/findings", params={"language": "fr"}, headers=env.headers())
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "language"]
    assert client.get("/api/v1/findings/export", params={"language": "fr"},
                      headers=env.headers()).status_code == 422
    from typing import get_args

    from gateway.api.schemas import Language
    from model.prompts import LANGUAGES
    assert get_args(Language) == LANGUAGES


# -- exports and documentation ------------------------------------------------------------------

def test_csv_exports_carry_a_byte_order_mark_when_asked(app: FastAPI, client: TestClient,
                                                        env: Env) -> None:
    with env.session() as s:
        make_study(s, env.data_dir)
        s.commit()
    plain = client.get("/api/v1/findings/export", params={"format": "csv", "language": "zh"},
                       headers=env.headers())
    assert plain.status_code == 200 and not plain.content.startswith(UTF8_BOM)
    marked = client.get("/api/v1/findings/export",
                        params={"format": "csv", "language": "zh", "bom": "true"},
                        headers=env.headers())
    assert marked.content == UTF8_BOM + plain.content
    rows = list(csv.DictReader(io.StringIO(marked.content.decode("utf-8-sig"))))
    assert {"左肺", "右肺"} <= {r["label"] for r in rows} and "id" in rows[0]
    audit = client.get("/api/v1/audit-events/export", params={"bom": "true"}, headers=env.headers())
    assert audit.content.startswith(UTF8_BOM)
    assert client.get("/api/v1/findings/export", params={"format": "json", "bom": "true"},
                      headers=env.headers()).json()  # JSON has no byte-order mark

    with _browser(app, env.auditor_token) as c:
        page = c.get("/ui/findings", params={"language": "zh"}).text
        link = re.search(r'<a id="export-csv" href="([^"]+)"', page)
        assert link and "bom=true" in link.group(1)
        ui_csv = c.get(link.group(1).replace("&amp;", "&"))
        assert ui_csv.content.startswith(UTF8_BOM)
        assert ui_csv.content.decode("utf-8-sig").count("\r\n") == len(rows) + 1
        assert not c.get("/ui/findings/export", params={"bom": "false"}).content.startswith(UTF8_BOM)


def test_root_leads_to_the_pages_and_docs_use_shipped_assets(app: FastAPI) -> None:
    with TestClient(app) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code in (302, 303, 307) and r.headers["location"] == "/ui/"
        r = c.get("/")
        assert r.url.path == "/ui/login" and "next=%2Fui%2Fstudies" in str(r.url)
        docs = c.get("/docs")
        assert docs.status_code == 200, docs.text
        urls = re.findall(r'(?:src|href)=["\']([^"\']+)', docs.text) + re.findall(r"url: *'([^']+)'", docs.text)
        assert urls and not [u for u in urls if "//" in u], urls
        assert not re.search(r"https?://", docs.text.replace("http://127.0.0.1", ""))
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"/docs/assets/{asset}" in docs.text
            got = c.get(f"/docs/assets/{asset}")
            assert got.status_code == 200 and len(got.content) > 10_000
        assert '"validatorUrl": null' in docs.text
        assert c.get("/ui/static/favicon.svg").status_code == 200


@pytest.mark.postgres
def test_studies_and_health_pages_on_postgresql(pg_env: Env) -> None:
    """The grouped queries of the studies list and the queue check run on PostgreSQL too."""
    from gateway.api.app import create_app

    with pg_env.session() as s:
        retrying = make_study(s, pg_env.data_dir, delivery_state=DeliveryState.PENDING)
        for dl in retrying.deliveries:
            dl.attempts = 2
        make_study(s, pg_env.data_dir, delivery_state=DeliveryState.FAILED)
        _bare_study(s, 1)
        s.commit()
    with _browser(create_app(pg_env.settings), pg_env.auditor_token) as c:
        studies = c.get("/ui/studies")
        health = c.get("/ui/health")
    assert studies.status_code == 200 and "2 retrying" in studies.text and "2 failed" in studies.text
    assert studies.text.count('class="study-link"') == 3
    assert health.status_code == 200 and "0 due, 2 waiting for a retry, 2 failed" in health.text


def test_api_edits_and_disables_destinations_callers_and_routes(client: TestClient, env: Env) -> None:
    """What the pages change, the API changes too (PATCH), audited the same way."""
    h = env.headers("admin")
    assert client.post("/api/v1/admin/destinations", headers=h, json={
        "name": "pacs", "ae_title": "PACS", "host": "10.0.0.10", "port": 104}).status_code == 201
    r = client.patch("/api/v1/admin/destinations/pacs", headers=h, json={"port": 11112, "tls": True})
    assert r.status_code == 200 and (r.json()["port"], r.json()["tls"], r.json()["host"]) == (11112, True, "10.0.0.10")
    r = client.patch("/api/v1/admin/destinations/pacs", headers=h, json={"enabled": False})
    assert r.json()["enabled"] is False and r.json()["port"] == 11112
    assert client.patch("/api/v1/admin/destinations/pacs", headers=h,
                        json={"port": 0}).status_code == 422
    assert client.patch("/api/v1/admin/destinations/nowhere", headers=h,
                        json={"enabled": True}).status_code == 404

    assert client.post("/api/v1/admin/calling-aes", headers=h, json={"ae_title": "CT1"}).status_code == 201
    r = client.patch("/api/v1/admin/calling-aes/CT1", headers=h,
                     json={"host": "10.1.2.0/24", "destinations": ["pacs"], "enabled": False})
    assert r.status_code == 200 and r.json()["host"] == "10.1.2.0/24" and r.json()["enabled"] is False
    r = client.patch("/api/v1/admin/calling-aes/CT1", headers=h, json={"destinations": ["nowhere"]})
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]

    assert client.post("/api/v1/admin/routes", headers=h, json={"name": "ct", "modality": "CT"}).status_code == 201
    r = client.patch("/api/v1/admin/routes/ct", headers=h,
                     json={"action": "store", "modality": "", "enabled": False})
    assert r.status_code == 200
    assert (r.json()["action"], r.json()["modality"], r.json()["enabled"]) == ("store", None, False)
    assert client.patch("/api/v1/admin/routes/ct", headers=env.headers(), json={}).status_code == 403

    events = [(e.action, e.outcome) for e in env.audit_events() if e.action.endswith(".update")]
    assert events == [("admin.destination.update", "success"), ("admin.destination.update", "success"),
                      ("admin.destination.update", "failure"), ("admin.calling_ae.update", "success"),
                      ("admin.calling_ae.update", "failure"), ("admin.route.update", "success")]


def test_deliveries_are_cancelled_and_retried_from_the_pages(app: FastAPI, env: Env) -> None:
    with env.session() as s:
        rows = make_study(s, env.data_dir, delivery_state=DeliveryState.FAILED)
        s.add(Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=4242))
        s.commit()
        uid, dl_id = rows.study.study_instance_uid, rows.deliveries[0].id
    csrf = csrf_value(env.admin_token)
    back = f"/ui/studies/{uid}"
    with _browser(app, env.admin_token) as c:
        page = c.get(back).text
        row = re.search(rf'<tr data-delivery="{dl_id}">.*?</tr>', page, re.S)
        assert row and ">Retry</button>" in row.group(0) and ">Cancel</button>" in row.group(0)
        r = c.post(f"/ui/admin/deliveries/{dl_id}/cancel", data={"csrf": csrf, "back": back})
        assert r.url.path == back and f"delivery {dl_id} cancelled" in r.text
        row = re.search(rf'<tr data-delivery="{dl_id}">.*?</tr>', r.text, re.S)
        assert row and "cancelled" in row.group(0) and ">Cancel</button>" not in row.group(0)
        r = c.post(f"/ui/admin/deliveries/{dl_id}/cancel", data={"csrf": csrf, "back": back})
        assert 'class="error"' in r.text  # a cancelled delivery cannot be cancelled again
        r = c.post(f"/ui/admin/deliveries/{dl_id}/retry", data={"csrf": csrf, "back": back})
        assert f"delivery {dl_id} is pending again" in r.text
    with env.session() as s:
        dl = s.get(Delivery, dl_id)
        assert dl is not None and dl.state == DeliveryState.PENDING
    assert [(e.action, e.outcome) for e in env.audit_events() if e.action.startswith("admin.delivery")] == [
        ("admin.delivery.cancel", "success"), ("admin.delivery.cancel", "failure"),
        ("admin.delivery.retry", "success")]
