"""Roles: no token and revoked tokens fail; auditors cannot change configuration; admins can,
through gateway.admin; retries of jobs and deliveries; every change and refusal is audited."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway import admin
from gateway.api import hooks
from common.models import Delivery, DeliveryAttempt, DeliveryState, Destination, Job, JobEvent, JobState, utcnow
from gateway.tokens import revoke_token

from .conftest import Env
from .factories import make_study

READS = ["/api/v1/findings", "/api/v1/studies", "/api/v1/deliveries", "/api/v1/audit-events",
         "/api/v1/findings/export", "/api/v1/audit-events/export"]
CHANGES = [
    ("post", "/api/v1/admin/destinations", {"name": "PACS2", "ae_title": "PACS2", "host": "10.0.0.9", "port": 104}),
    ("post", "/api/v1/admin/calling-aes", {"ae_title": "MODALITY9"}),
    ("post", "/api/v1/admin/routes", {"name": "ct-only", "modality": "CT"}),
    ("delete", "/api/v1/admin/destinations/PACS", None),
    ("post", "/api/v1/admin/jobs/1/retry", None),
    ("post", "/api/v1/admin/jobs/1/cancel", None),
    ("post", "/api/v1/admin/deliveries/1/retry", None),
    ("get", "/api/v1/admin/jobs", None),
    ("get", "/api/v1/admin/destinations", None),
]


@pytest.mark.parametrize("path", READS)
def test_no_token_and_bad_tokens_are_refused(client: TestClient, env: Env, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.get(path, headers={"Authorization": "Bearer mrg_not-a-real-token"})
    assert r.status_code == 401
    r = client.get(path, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert r.status_code == 401
    assert env.audit_events()[-1].action == "auth.failure"


def test_revoked_token_fails_at_once(client: TestClient, env: Env) -> None:
    assert client.get("/api/v1/findings", headers=env.headers()).status_code == 200
    with env.session() as s:
        revoke_token(s, "bob-auditor")
        s.commit()
    r = client.get("/api/v1/findings", headers=env.headers())
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    last = env.audit_events()[-1]
    assert (last.action, last.outcome, last.actor) == ("auth.failure", "denied", "anonymous")


@pytest.mark.parametrize("method,path,body", CHANGES)
def test_auditor_cannot_change_configuration_or_retry(client: TestClient, env: Env, method: str,
                                                      path: str, body: dict | None) -> None:
    with env.session() as s:
        admin.add_destination(s, "PACS", "PACS", "127.0.0.1", 104)
        s.commit()
    r = client.request(method, path, json=body, headers=env.headers("auditor"))
    assert r.status_code == 403, r.text
    with env.session() as s:
        assert [d.name for d in admin.list_destinations(s)] == ["PACS"]
        assert admin.list_calling_aes(s) == [] and admin.list_routes(s) == []
    last = env.audit_events()[-1]
    assert (last.action, last.outcome, last.actor) == ("auth.forbidden", "denied", "bob-auditor")


def test_admin_manages_configuration_through_gateway_admin(client: TestClient, env: Env) -> None:
    h = env.headers("admin")
    r = client.post("/api/v1/admin/destinations", headers=h,
                    json={"name": "PACS", "ae_title": " PACS_MAIN ", "host": "10.1.2.3", "port": 104,
                          "send": "sr+gsps"})
    assert r.status_code == 201, r.text
    assert r.json()["ae_title"] == "PACS_MAIN"  # validated and stripped by gateway.admin
    assert client.post("/api/v1/admin/destinations", headers=h,
                       json={"name": "PACS", "ae_title": "X", "host": "h", "port": 1}).status_code == 409
    bad_ae = client.post("/api/v1/admin/calling-aes", headers=h, json={"ae_title": "BAD\\AE"})
    assert bad_ae.status_code == 422  # refused by the documented schema (PS3.5 AE)
    unknown = client.post("/api/v1/admin/calling-aes", headers=h,
                          json={"ae_title": "CT1", "destinations": ["NOWHERE"]})
    assert unknown.status_code == 404
    assert client.post("/api/v1/admin/calling-aes", headers=h,
                       json={"ae_title": "CT1", "destinations": ["PACS"]}).status_code == 201
    assert client.post("/api/v1/admin/routes", headers=h,
                       json={"name": "ct", "modality": "CT", "destinations": ["PACS"]}).status_code == 201
    listed = client.get("/api/v1/admin/routes", headers=h).json()
    assert listed[0]["name"] == "ct" and listed[0]["modality"] == "CT"
    assert client.get("/api/v1/admin/calling-aes", headers=h).json()[0]["destinations"] == ["PACS"]
    assert client.delete("/api/v1/admin/routes/ct", headers=h).status_code == 200
    assert client.delete("/api/v1/admin/routes/ct", headers=h).status_code == 404
    assert client.delete("/api/v1/admin/calling-aes/CT1", headers=h).status_code == 200
    assert client.delete("/api/v1/admin/destinations/PACS", headers=h).status_code == 200
    with env.session() as s:
        assert s.scalars(select(Destination)).all() == []
    actions = [(e.action, e.outcome) for e in env.audit_events() if e.action.startswith("admin.")]
    assert ("admin.destination.add", "success") in actions
    assert ("admin.destination.add", "failure") in actions
    assert ("admin.route.remove", "success") in actions
    assert all(e.actor == "alice-admin" for e in env.audit_events() if e.action.startswith("admin."))


@pytest.fixture
def hook_calls() -> Iterator[list[int]]:
    calls: list[int] = []
    previous = hooks.set_enqueue_delivery(calls.append)
    yield calls
    hooks.set_enqueue_delivery(previous)


def test_retry_failed_delivery(client: TestClient, env: Env, hook_calls: list[int]) -> None:
    with env.session() as s:
        rows = make_study(s, env.data_dir, delivery_state=DeliveryState.FAILED)
        sent = make_study(s, env.data_dir)
        s.commit()
        failed_id, sent_id = rows.deliveries[0].id, sent.deliveries[0].id
    h = env.headers("admin")
    listed = client.get("/api/v1/admin/deliveries/failed", headers=h).json()
    assert {d["id"] for d in listed["items"]} == {d.id for d in rows.deliveries}

    gone = client.post(f"/api/v1/admin/deliveries/{failed_id}/retry", headers=h)
    assert gone.status_code == 409 and "destination 'PACS' no longer exists" in gone.json()["detail"]
    with env.session() as s:
        admin.add_destination(s, "PACS", "PACS", "127.0.0.1", 104)
        s.commit()
    before = dt.datetime.now(dt.timezone.utc)
    r = client.post(f"/api/v1/admin/deliveries/{failed_id}/retry", headers=h)
    assert r.status_code == 200, r.text
    assert hook_calls == [failed_id]
    with env.session() as s:
        dl = s.get_one(Delivery, failed_id)
        assert dl.state == DeliveryState.PENDING and dl.attempts == 0
        assert dl.next_attempt_at is not None and dl.next_attempt_at >= before - dt.timedelta(seconds=1)
    assert client.post(f"/api/v1/admin/deliveries/{failed_id}/retry", headers=h).status_code == 409
    assert client.post(f"/api/v1/admin/deliveries/{sent_id}/retry", headers=h).status_code == 409
    assert client.post("/api/v1/admin/deliveries/999999/retry", headers=h).status_code == 404
    assert hook_calls == [failed_id]  # refused retries enqueue nothing
    retry = [e for e in env.audit_events() if e.action == "admin.delivery.retry"]
    assert [e.outcome for e in retry] == ["failure", "success", "failure", "failure", "failure"]


def test_list_and_cancel_deliveries(client: TestClient, env: Env) -> None:
    """Issue 17: every delivery by state, destination and study, with the exact error of each
    attempt and its state changes; cancel as the CLI's (workflow.deliveries.cancel)."""
    with env.session() as s:
        failed = make_study(s, env.data_dir, delivery_state=DeliveryState.FAILED)
        pending = make_study(s, env.data_dir, delivery_state=DeliveryState.PENDING)
        s.commit()
        failed_id, pending_id = failed.deliveries[0].id, pending.deliveries[0].id
        s.add(DeliveryAttempt(delivery_id=failed_id, at=utcnow(), status=None,
                              error="connection refused (ECONNREFUSED) to 10.0.0.5:104"))
        s.commit()
        pending_uid = pending.study.study_instance_uid
    h = env.headers("admin")
    page = client.get("/api/v1/admin/deliveries", params={"state": ["failed", "cancelled"]}, headers=h).json()
    assert [d["id"] for d in page["items"]] == [d.id for d in failed.deliveries][::-1]
    item = next(d for d in page["items"] if d["id"] == failed_id)
    assert item["last_error"] == "connection refused (ECONNREFUSED) to 10.0.0.5:104"
    assert item["attempts_log"][-1]["error"] == item["last_error"]
    by_study = client.get("/api/v1/admin/deliveries", params={"study_instance_uid": pending_uid}, headers=h).json()
    assert {d["id"] for d in by_study["items"]} == {d.id for d in pending.deliveries}
    assert client.get("/api/v1/admin/deliveries", params={"state": "lost"}, headers=h).status_code == 422
    assert client.get("/api/v1/admin/deliveries", params={"destination": "nowhere"}, headers=h).json()["items"] == []
    assert client.get("/api/v1/admin/deliveries", headers=env.headers("auditor")).status_code == 403

    assert client.post(f"/api/v1/admin/deliveries/{pending_id}/cancel", headers=h).status_code == 200
    assert client.post(f"/api/v1/admin/deliveries/{pending_id}/cancel", headers=h).status_code == 409
    cancelled = client.get("/api/v1/admin/deliveries", params={"state": "cancelled"}, headers=h).json()["items"]
    assert [d["id"] for d in cancelled] == [pending_id]
    assert [(e["state"], e["detail"]) for e in cancelled[0]["events"]][-1] == ("cancelled", "cancelled by alice-admin")
    outcomes = [e.outcome for e in env.audit_events() if e.action == "admin.delivery.cancel"]
    assert outcomes == ["success", "failure"]


def test_retry_and_cancel_jobs(client: TestClient, env: Env) -> None:
    with env.session() as s:
        dead = make_study(s, env.data_dir, job_state=JobState.DEAD).job.id
        failed = make_study(s, env.data_dir, job_state=JobState.FAILED).job.id
        done = make_study(s, env.data_dir).job.id
        s.commit()
    h = env.headers("admin")
    listed = client.get("/api/v1/admin/jobs", headers=h).json()
    assert {j["id"] for j in listed["items"]} == {dead, failed}
    assert client.post(f"/api/v1/admin/jobs/{dead}/retry", headers=h).status_code == 200
    assert client.post(f"/api/v1/admin/jobs/{failed}/cancel", headers=h).status_code == 200
    assert client.post(f"/api/v1/admin/jobs/{done}/retry", headers=h).status_code == 409
    assert client.post(f"/api/v1/admin/jobs/{done}/cancel", headers=h).status_code == 409
    assert client.post("/api/v1/admin/jobs/424242/retry", headers=h).status_code == 404
    with env.session() as s:
        job = s.get_one(Job, dead)
        assert job.state == JobState.PENDING and job.attempts == 0 and job.published_at is None
        assert s.get_one(Job, failed).state == JobState.CANCELLED
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == dead).order_by(JobEvent.id)).all()
        assert (events[-1].state, events[-1].detail) == ("pending", "retried by alice-admin")
    assert client.get("/api/v1/admin/jobs", params={"state": "pending"}, headers=h).json()["items"][0]["id"] == dead


def test_admin_may_read_everything_an_auditor_may(client: TestClient, env: Env) -> None:
    for path in READS:
        assert client.get(path, headers=env.headers("admin")).status_code == 200, path
