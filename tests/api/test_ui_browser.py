"""The web pages in headless Chromium (Playwright): log in, search, open a study and see the
picture with its boxes, retry a failed delivery as an admin.

Chromium is Debian's (/usr/bin/chromium, installed by `make setup`); its absence fails the test.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from sqlalchemy import select

from gateway.api import hooks
from gateway.api.app import create_app
from common.models import AuditEvent, Delivery, DeliveryState, Destination

from ..conftest import free_port
from ..peers.chromium import chromium
from .conftest import Env
from .factories import BASE_TIME, make_study


@pytest.fixture
def server(env: Env) -> Iterator[str]:
    app = create_app(env.settings)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def test_login_search_study_picture_and_retry(env: Env, server: str, browser, tmp_path: Path) -> None:
    with env.session() as s:
        ok = make_study(s, env.data_dir, calling_ae_title="CR_ROOM_1")
        broken = make_study(s, env.data_dir, calling_ae_title="CT_SCANNER", modality="CT",
                            delivery_state=DeliveryState.FAILED)
        # A retry needs the destination to exist (workflow.deliveries refuses one to a removed one).
        s.add(Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=4242))
        s.commit()
        uid, failed_id = ok.study.study_instance_uid, broken.deliveries[0].id
    calls: list[int] = []
    previous = hooks.set_enqueue_delivery(calls.append)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(15000)

        # Pages need a session: the browser lands on the login form, and a bad token is refused.
        page.goto(f"{server}/ui/findings")
        assert "/ui/login" in page.url
        page.fill("#token", "mrg_wrong")
        page.click("#login")
        assert "not valid" in page.locator(".error").inner_text()

        page.fill("#token", env.auditor_token)
        page.click("#login")
        page.wait_for_url("**/ui/findings")
        cookie = next(c for c in page.context.cookies() if c["name"] == "medrega_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # Search: Chinese label text, one calling AE.
        page.fill("#label", "肺")
        page.fill("input[name=calling_ae_title]", "CR_ROOM_1")
        page.click("#search")
        page.wait_for_url("**label=**")
        rows = page.locator("#results tbody tr")
        assert rows.count() == 2
        assert {"左肺", "右肺"} <= set(page.locator("#results tbody td").all_inner_texts())
        assert "Doe^Jane" not in page.content()  # auditors see no patient identifiers

        # Open the study: the picture renders with the boxes; labels side by side.
        page.locator("a.study-link").first.click()
        page.wait_for_url(f"**/ui/studies/{uid}")
        page.wait_for_function(
            "() => { const i = document.querySelector('img.annotated');"
            " return i && i.complete && i.naturalWidth > 0; }")
        width, height = page.eval_on_selector("img.annotated", "i => [i.naturalWidth, i.naturalHeight]")
        assert width >= 512 and height > 0
        region_rows = page.locator("table.regions tbody tr").all_inner_texts()
        assert any("left lung" in r and "左肺" in r for r in region_rows)
        assert "delivered_to" in page.locator("#timeline").inner_text()
        shot = tmp_path / "study.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] >= 1000
        # An auditor has no administration page and no retry button.
        assert page.locator("text=Administration").count() == 0
        refused = page.goto(f"{server}/ui/admin")
        assert refused is not None and refused.status == 403
        assert page.locator("h1").inner_text() == "Not allowed"  # the styled page, not JSON

        # Log out, log in as admin, retry the failed delivery.
        page.goto(f"{server}/ui/findings")
        page.click("text=Log out")
        page.wait_for_url("**/ui/login")
        page.fill("#token", env.admin_token)
        page.click("#login")
        page.wait_for_url("**/ui/studies")
        page.click("text=Administration")
        page.wait_for_url("**/ui/admin")
        assert page.locator("#failed-deliveries tbody tr").count() == 2
        page.click(f"button.retry-delivery[data-id='{failed_id}']")
        page.wait_for_url("**/ui/admin?message=**")
        assert f"delivery {failed_id} is pending again" in page.locator(".message").inner_text()
        assert page.locator("#failed-deliveries tbody tr").count() == 1
        page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    finally:
        hooks.set_enqueue_delivery(previous)

    assert calls == [failed_id]
    with env.session() as s:
        dl = s.get(Delivery, failed_id)
        assert dl is not None and dl.state == DeliveryState.PENDING and dl.attempts == 0
        actions = [(e.actor, e.action) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert ("bob-auditor", "findings.search") in actions
    assert ("bob-auditor", "study.read") in actions and ("bob-auditor", "study.image") in actions
    assert ("alice-admin", "admin.delivery.retry") in actions
    assert ("anonymous", "auth.failure") in actions


#: The screen the pages must fit (issue 17: the findings table was 1,700-2,000 px wide).
SCREEN = {"width": 1366, "height": 768}


def _only_own_host(page, server: str, foreign: list[str]) -> None:
    """Every request to another host is recorded and refused (a page that needs the internet
    is blank in a hospital network)."""
    own = server.rstrip("/")

    def route(r) -> None:
        url = r.request.url
        if url == own or url.startswith(own + "/") or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            foreign.append(url)
            r.abort()

    page.route("**/*", route)


def _shoot(page, tmp_path: Path, name: str) -> int:
    """Screenshot at 1,366 x 768 (full page) under the test's tmp dir; the page's scroll width."""
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    width = page.evaluate("() => document.scrollingElement.scrollWidth")
    assert width <= SCREEN["width"], f"{name}: {width} px wide in a {SCREEN['width']} px window"
    return int(width)


def test_every_page_fits_1366_and_loads_nothing_from_elsewhere(env: Env, server: str, browser,
                                                               tmp_path: Path) -> None:
    from common.models import DeliveryAttempt
    from gateway import admin

    with env.session() as s:
        ok = make_study(s, env.data_dir, calling_ae_title="CR_ROOM_1",
                        weights_id="sha256:" + "5c2d9f0e7a" * 6 + "abcd")
        broken = make_study(s, env.data_dir, calling_ae_title="CT_SCANNER", modality="CT",
                            delivery_state=DeliveryState.FAILED,
                            weights_id="sha256:" + "9e8d7c6b5a" * 6 + "0123")
        retrying = make_study(s, env.data_dir, delivery_state=DeliveryState.PENDING)
        retrying.deliveries[0].attempts = 3
        retrying.deliveries[0].next_attempt_at = BASE_TIME + dt.timedelta(days=7)
        s.add(DeliveryAttempt(delivery_id=retrying.deliveries[0].id,
                              error="connection refused by 127.0.0.1:4242 (ECONNREFUSED): "
                                    "nothing listens on that port of the destination"))
        s.add(Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=4242))
        s.flush()
        admin.add_calling_ae(s, "CT_SCANNER", "10.1.2.0/24",
                             "CT room 1 in the east wing, second floor, next to the emergency "
                             "department's resuscitation bay (Siemens SOMATOM)", ["PACS"])
        admin.add_route(s, "ct-chest-urgent-from-the-emergency-department", order=5,
                        calling_ae_title="CT_SCANNER", modality="CT", body_part_examined="CHEST",
                        series_description="*thorax*1.0*", action="process", urgent=True,
                        destinations=["PACS"])
        s.commit()
        uid = broken.study.study_instance_uid
        assert ok.study.study_instance_uid != uid
    foreign: list[str] = []
    widths: dict[str, int] = {}
    page = browser.new_page(viewport=SCREEN)
    page.set_default_timeout(15000)
    _only_own_host(page, server, foreign)

    page.goto(f"{server}/")
    page.wait_for_url("**/ui/login**")
    widths["login"] = _shoot(page, tmp_path, "login")
    page.fill("#token", env.admin_token)
    page.click("#login")
    page.wait_for_url("**/ui/studies")
    assert page.locator("#studies tbody tr").count() == 3

    pages = {
        "studies": "/ui/studies",
        "findings": "/ui/findings",
        "study": f"/ui/studies/{uid}",
        "audit": "/ui/audit",
        "health": "/ui/health",
        "admin": "/ui/admin",
        "destinations": "/ui/admin/destinations",
        "destination-edit": "/ui/admin/destinations/PACS/edit",
        "destination-remove": "/ui/admin/destinations/PACS/remove",
        "callers": "/ui/admin/calling-aes",
        "routes": "/ui/admin/routes",
        "not-found": "/ui/no-such-page",
        "invalid-filter": "/ui/findings?language=fr",
    }
    for name, path in pages.items():
        response = page.goto(f"{server}{path}")
        assert response is not None
        expected = {"not-found": 404, "invalid-filter": 422}.get(name, 200)
        assert response.status == expected, (name, response.status)
        widths[name] = _shoot(page, tmp_path, name)

    # The weights hash is shortened in the findings table, its full value in a title.
    page.goto(f"{server}/ui/findings")
    hashes = page.locator("#results span.hash")
    assert hashes.count() > 0
    assert hashes.first.get_attribute("title", timeout=5000).startswith("sha256:")
    assert len(hashes.first.inner_text()) <= 13

    # The retrying delivery is shown with its next attempt and last error.
    page.goto(f"{server}/ui/admin/destinations")
    row = page.locator(f"tr[data-delivery='{retrying.deliveries[0].id}']")
    assert "retrying" in row.inner_text() and "ECONNREFUSED" in row.inner_text()

    # Removal needs the confirmation page's button; Keep it changes nothing.
    page.goto(f"{server}/ui/admin/destinations")
    page.click("tr[data-destination='PACS'] a:has-text('Remove')")
    page.wait_for_url("**/ui/admin/destinations/PACS/remove")
    page.click("text=Keep it")
    page.wait_for_url("**/ui/admin/destinations")
    assert page.locator("tr[data-destination='PACS']").count() == 1

    # An auditor asking for an administrator's page gets the styled 403 page.
    auditor = browser.new_page(viewport=SCREEN)
    _only_own_host(auditor, server, foreign)
    auditor.goto(f"{server}/ui/login")
    auditor.fill("#token", env.auditor_token)
    auditor.click("#login")
    auditor.wait_for_url("**/ui/studies")
    refused = auditor.goto(f"{server}/ui/admin/destinations")
    assert refused is not None and refused.status == 403
    assert auditor.locator("h1").inner_text() == "Not allowed"
    widths["forbidden"] = _shoot(auditor, tmp_path, "forbidden")

    # /docs: Swagger UI from the project's own files renders the operations.
    docs = browser.new_page(viewport=SCREEN)
    _only_own_host(docs, server, foreign)
    docs.goto(f"{server}/docs")
    docs.wait_for_selector(".opblock", timeout=20000)
    assert docs.locator(".opblock").count() > 10
    docs.screenshot(path=str(tmp_path / "docs.png"), full_page=False)

    assert foreign == [], foreign
    assert len(list(tmp_path.glob("*.png"))) == len(widths) + 1
