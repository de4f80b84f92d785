"""Issue 13 case 8, HTTP side: failed authentication is limited per client address with a
growing wait and recorded with a bounded path; the pages' role refusals are audited like the
API's."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.api.auth import MAX_AUDITED_PATH
from gateway.api.throttle import AuthFailureLimiter
from gateway.api.ui import COOKIE_NAME, csrf_value

from .conftest import Env, make_settings

#: About 15 KB of path, as in the issue.
LONG_PATH = "/api/v1/studies/" + "1." * 7_500


def test_bad_tokens_are_recorded_bounded_then_refused_with_429(env: Env) -> None:
    settings = make_settings(env.url, env.data_dir, auth_failures_allowed=3,
                             auth_failure_delay_s=60.0)
    bad = {"Authorization": "Bearer mrg_not-a-real-token"}
    with TestClient(create_app(settings)) as client:
        codes = [client.get(LONG_PATH, headers=bad).status_code for _ in range(3)]
        assert codes == [401, 401, 401]
        # The fourth failure starts the wait; every later request of this address is refused
        # before its token is looked up, and is not recorded.
        assert client.get(LONG_PATH, headers=bad).status_code == 401
        later = [client.get(LONG_PATH, headers=bad) for _ in range(200)]
        assert {r.status_code for r in later} == {429}
        assert 55 <= int(later[-1].headers["Retry-After"]) <= 60
        # Even a good token waits: the address is refused, not the token.
        assert client.get("/api/v1/findings", headers=env.headers()).status_code == 429
        # A UI login from that address waits too.
        assert client.post("/ui/login", data={"token": "mrg_x"}).status_code == 429
        # Another client address is not affected.
    with TestClient(create_app(settings), client=("192.0.2.7", 50000)) as other:
        assert other.get("/api/v1/findings", headers=env.headers()).status_code == 200
    failures = [e for e in env.audit_events() if e.action == "auth.failure"]
    assert len(failures) == 4
    for event in failures:
        assert len(event.query or "") < MAX_AUDITED_PATH + 200
        recorded = json.loads(event.query or "{}")
        assert recorded["path"] == LONG_PATH[:MAX_AUDITED_PATH]
        assert recorded["path_length"] == len(LONG_PATH)
        assert recorded["client"] == "testclient"


def test_the_wait_grows_with_each_failure_and_is_forgotten() -> None:
    now = [1000.0]
    limiter = AuthFailureLimiter(allowed=2, delay_s=1.0, max_delay_s=8.0, clock=lambda: now[0])
    waits = [limiter.failed("198.51.100.1") for _ in range(7)]
    assert waits == [0, 0, 1, 2, 4, 8, 8]
    assert limiter.retry_after("198.51.100.1") == 8
    assert limiter.retry_after("198.51.100.2") == 0
    now[0] += 8
    assert limiter.retry_after("198.51.100.1") == 0
    # Still remembered: the next failure waits the longest at once ...
    assert limiter.failed("198.51.100.1") == 8
    # ... until the address has been quiet long enough (2^10 x the first wait here).
    now[0] += 1025
    assert limiter.retry_after("198.51.100.1") == 0
    assert limiter.failed("198.51.100.1") == 0


def _ui_client(app, token: str) -> TestClient:
    client = TestClient(app)
    client.cookies.set(COOKIE_NAME, token)
    return client


@pytest.mark.parametrize("method,path,form", [
    ("get", "/ui/admin", None),
    ("post", "/ui/admin/destinations", {"name": "P2", "ae_title": "P2", "host": "h", "port": "104"}),
    ("post", "/ui/admin/calling-aes", {"ae_title": "CT9"}),
    ("post", "/ui/admin/routes", {"name": "ct"}),
    ("post", "/ui/admin/jobs/1/retry", {}),
    ("post", "/ui/admin/deliveries/1/retry", {}),
    ("post", "/ui/admin/routes/ct/remove", {}),
])
def test_an_auditors_refused_page_or_form_is_audited(app, env: Env, method: str, path: str,
                                                      form: dict | None) -> None:
    with _ui_client(app, env.auditor_token) as client:
        data = None if form is None else {**form, "csrf": csrf_value(env.auditor_token)}
        r = client.request(method, path, data=data, follow_redirects=False)
    assert r.status_code == 403, r.text
    last = env.audit_events()[-1]
    assert (last.action, last.outcome, last.actor, last.role) == (
        "auth.forbidden", "denied", "bob-auditor", "auditor")
    assert json.loads(last.query or "{}") == {"method": method.upper(), "path": path, "client": "testclient"}
