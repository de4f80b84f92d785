"""Issue 16: the OHIF Viewer itself, in Chromium, shows our regions named, in English and in Chinese.

The real path end to end: Orthanc (Debian's, with its DICOMweb plugin) holds the sample study and
C-STOREs it to ``medrega-gateway serve`` (replay backend: MedRegA's reference answers); the gateway
sends its SRs (TID 1500, one per language) and presentation states back to Orthanc. OHIF's own
published build (``@ohif/app`` from npm, ``tests/viewers/ohif-app/``) is served on loopback with
Orthanc's DICOMweb behind it, and Playwright drives Debian's Chromium as a radiologist would:
open the study, double-click an SR, check the boxes drawn on the image it shows, accept the offer
to track (OHIF "hydrates" the SR into measurements), and check the measurement panel and each
measurement's image: the finding name of every region on its own image. Screenshots are written
to the test's folder (and to ``$MEDREGA_TEST_OHIF_SCREENSHOTS`` when set: that is how docs/viewers/ is
made). No request leaves the loopback interface.
"""

from __future__ import annotations

import dataclasses

import io
import ipaddress
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pydicom
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from sqlalchemy import select

from common.db import session_scope
from common.models import Delivery, DeliveryState, Finding, Job, JobState
from gateway.demo.samples import make_sample_study
from sr_writer.readback import read_report
from tests.e2e.harness import (
    cli,
    free_port,
    gateway_process,
    port_open,
    reference_replay_lines,
    write_bilingual_region_plans,
    wait_for,
    write_config,
    write_replay,
)
from tests.peers.chromium import chromium
from tests.peers.ohif import ohif_site
from tests.peers.orthanc import Orthanc, orthanc

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

pytestmark = [pytest.mark.peers, pytest.mark.slow]

VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
BOXES = "svg.svg-layer g[data-annotation-uid]"
# What OHIF knows of the one viewport: the image it shows and the annotations drawn on it (the
# SVG layer of Cornerstone3D; each annotation's group carries its UID, the SR's Tracking UID).
VIEWPORT_STATE = f"""() => {{
  const viewport = window.cornerstone.getEnabledElements()[0]?.viewport;
  const boxes = [...document.querySelectorAll('{BOXES}')];
  return {{imageId: viewport?.getCurrentImageId?.() ?? null,
           boxes: boxes.map(g => ({{uid: g.dataset.annotationUid, text: g.textContent}}))}};
}}"""
# OHIF's measurements, with their points in pixels of their image (Cornerstone keeps world coordinates).
MEASUREMENTS = """() => window.services.measurementService.getMeasurements().map(m => ({
  uid: m.uid, label: m.label, sop: m.SOPInstanceUID, text: JSON.stringify(m.displayText ?? ''),
  pixels: (m.points || []).map(p => window.cornerstone.utilities.worldToImageCoords(m.referencedImageId, p))}))"""
BOX_DRAWN = f"""uids => [...document.querySelectorAll('{BOXES}')].some(g => uids.includes(g.dataset.annotationUid))"""
# OHIF's display sets by modality, with the codes of the messages (warning triangles) it gives them.
DISPLAY_SET_MESSAGES = """() => Object.fromEntries(window.services.displaySetService.getActiveDisplaySets()
  .map(d => [d.Modality, (d.messages?.messages ?? []).map(m => m.id)]))"""
UNSUPPORTED_SOP_CLASS_UID = 14  # DisplaySetMessage.CODES.UNSUPPORTED_SOP_CLASS_UID in OHIF's core
WADO_RS_INSTANCE = re.compile(r"/instances/([0-9.]+)/frames/")
# The rows whose screenshots docs/viewers/ keeps: a region of the radiograph in each language.
DOCS_ROWS = {("en", 3), ("zh", 1)}
LOAD_ATTEMPTS = 3
SETTLE_S = 1.5  # Cornerstone draws the annotations after the image: let a frame or two pass


@dataclass(frozen=True)
class Region:
    """One region as the gateway filed it: what OHIF must show, and on which image."""

    language: str
    names: tuple[str, ...]  # the model's label, and the meaning of the code it was given
    tracking_uid: str
    sop_instance_uid: str
    box: tuple[float, float, float, float]  # in pixels of that image: column, row of two corners

    def named_in(self, text: str | None) -> bool:
        """Whether ``text`` names this region (code meanings may capitalise: "Right lung")."""
        return any(name.casefold() in (text or "").casefold() for name in self.names)


def _sop_of(image_id: str | None) -> str | None:
    """SOP Instance UID in a WADO-RS frame URL (PS3.18 10.4.1.1.5), OHIF's imageId for wadors."""
    match = WADO_RS_INSTANCE.search(image_id or "")
    return match.group(1) if match else None


def _bounds(points: list[list[float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys)) if points else (0.0, 0.0, 0.0, 0.0)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if urlsplit(url).scheme in ("data", "blob"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class Pacs:
    """Orthanc after the pipeline ran: the study, our SRs (by language) and presentation states."""

    orthanc: Orthanc
    regions: list[Region]
    srs: dict[str, pydicom.Dataset]

    def regions_in(self, language: str) -> list[Region]:
        """The regions of ``language``'s SR: both SRs carry every box (issue 14), one per Tracking UID,
        with this language's row where the box has one and every name either row gives it."""
        by_uid: dict[str, list[Region]] = {}
        for region in self.regions:
            by_uid.setdefault(region.tracking_uid, []).append(region)
        chosen = []
        for rows in by_uid.values():
            own = next((r for r in rows if r.language == language), rows[0])
            names = tuple(dict.fromkeys(n for r in rows for n in r.names))
            chosen.append(dataclasses.replace(own, names=names))
        return chosen


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """Orthanc holding the study, our SRs and presentation states, put there by the real pipeline:
    Orthanc C-STOREs the study to ``serve``, which sends its results back to Orthanc."""
    folder = tmp_path_factory.mktemp("ohif")
    sample = make_sample_study(folder / "study")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sample.files]
    ct_uid = next(h.SOPInstanceUID for h in headers if h.Modality == "CT")
    cr_uid = next(h.SOPInstanceUID for h in headers if h.Modality == "CR")
    replay = write_replay(folder / "replay.jsonl", reference_replay_lines(ct_uid, cr_uid))
    node_port = free_port()
    with orthanc(folder / "orthanc", dicomweb=True,
                 modalities={"medrega": ("MEDREGA", "127.0.0.1", node_port)}) as server:
        destination = {"name": "orthanc", "ae_title": server.ae_title, "host": "127.0.0.1",
                       "port": server.dicom_port, "send": "sr+gsps"}
        config = write_config(folder, node_port=node_port, backend="replay", model_path=str(replay),
                              destinations=[destination],
                              sections={"model": {"plans_path": str(write_bilingual_region_plans(folder))}})
        cli(config, "db", "upgrade")
        serve = gateway_process(config, "serve", folder / "serve.log").start()
        database = f"sqlite:///{folder / 'var' / 'gateway.db'}"
        try:
            wait_for(lambda: port_open(node_port), 60, "the DICOM node to listen", [serve])
            server.store("medrega", [server.upload(f) for f in sample.files])  # as a hospital's PACS would

            def delivered() -> bool:
                with session_scope(database) as s:
                    jobs = s.scalars(select(Job)).all()
                    failed = [j.error for j in jobs if j.state in (JobState.DEAD, JobState.FAILED)]
                    assert not failed, f"job failed: {failed}"
                    sent = [d.state == DeliveryState.SENT for d in s.scalars(select(Delivery))]
                    return bool(jobs) and all(j.state == JobState.DELIVERED for j in jobs) and bool(sent) and all(sent)

            wait_for(delivered, 240, "the SRs and presentation states to reach Orthanc", [serve])
        finally:
            serve.stop()
        with session_scope(database) as s:
            regions = [Region(f.language, tuple(n for n in (f.label, f.code_meaning) if n), f.tracking_uid or "",
                              f.referenced_sop_instance_uid or "",
                              (float(f.px_x1 or 0), float(f.px_y1 or 0), float(f.px_x2 or 0), float(f.px_y2 or 0)))
                       for f in s.scalars(select(Finding).where(Finding.kind == "region"))]
        srs: dict[str, pydicom.Dataset] = {}
        modalities = []
        for instance in server.rest("GET", "/instances"):
            ds = pydicom.dcmread(io.BytesIO(server.rest("GET", f"/instances/{instance}/file")))
            modalities.append(ds.Modality)
            if ds.Modality == "SR":
                language = read_report(ds).language
                assert language is not None, f"SR {ds.SOPInstanceUID} has no Language of Content Item"
                srs[language[0]] = ds
        assert sorted(srs) == ["en", "zh"], f"Orthanc holds {sorted(modalities)}"
        assert "PR" in modalities, f"Orthanc holds no presentation state: {sorted(modalities)}"
        assert {r.language for r in regions} == {"en", "zh"}
        yield Pacs(server, regions, srs)


@pytest.fixture(scope="module")
def site(pacs: Pacs) -> Iterator[str]:
    with ohif_site(pacs.orthanc.url) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@dataclass
class Session:
    """A browser context that records every request and console message, and lets no request
    leave the loopback interface (each is recorded first, then refused)."""

    context: BrowserContext
    requests: list[str]
    console: list[str]

    def assert_loopback_only(self) -> None:
        assert self.requests, "the browser made no request at all"
        outside = sorted({u for u in self.requests if not _is_loopback(u)})
        assert outside == [], f"OHIF asked hosts other than loopback: {outside}"


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    context = browser.new_context(viewport=VIEWPORT, service_workers="block", locale="en-US")
    recorded = Session(context, [], [])
    context.on("request", lambda r: recorded.requests.append(r.url))
    # The first line of each message: enough to see what OHIF did, without its stack traces.
    context.on("console", lambda m: recorded.console.append(f"{m.type}: {m.text.splitlines()[0][:300]}"))
    context.route(lambda url: not _is_loopback(url), lambda route: route.abort())
    try:
        yield recorded
    finally:
        context.close()


def _save(page: Page, folder: Path, name: str, *, docs: bool = False) -> Path:
    """A screenshot in the test's folder; with ``docs``, also a small copy (96-colour palette PNG)
    in ``$MEDREGA_TEST_OHIF_SCREENSHOTS`` when set: how docs/viewers/ is made."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    target = os.environ.get("MEDREGA_TEST_OHIF_SCREENSHOTS")
    if docs and target:
        Path(target).mkdir(parents=True, exist_ok=True)
        small = Image.open(path).convert("RGB").quantize(colors=96, method=Image.Quantize.FASTOCTREE)
        small.save(Path(target) / path.name, optimize=True)
    return path


def _open_study(session: Session, site: str, study_uid: str) -> Page:
    page = session.context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{site}/viewer?StudyInstanceUIDs={study_uid}")
    # Ready when the hanging protocol has put a first image in the viewport.
    page.wait_for_function("() => window.cornerstone?.getEnabledElements()[0]?.viewport?.getCurrentImageId?.()")
    return page


def _load_sr(page: Page, series_description: str, console: list[str]) -> None:
    """Double-click the SR's series in the study browser and wait for OHIF's SR viewport to draw its
    boxes. Two races of OHIF 3.13 are met here as a user meets them: a double-click made while
    the hanging protocol still fills the viewport is lost (the user double-clicks again), and the SR
    viewport's first render may come before its annotations are set (drawn on the next render,
    as on any mouse move: here one ``viewport.render()``)."""
    thumbnail = page.locator("[data-cy=study-browser-thumbnail-no-image]").filter(has_text=series_description)
    for _ in range(LOAD_ATTEMPTS):
        thumbnail.dblclick()
        try:
            page.locator("[data-cy=ModalityLoadBadge-default]").wait_for(timeout=10_000)  # the SR viewport
        except PlaywrightTimeout:
            continue
        for _ in range(2):
            try:
                page.wait_for_selector(BOXES, timeout=5_000)
                return
            except PlaywrightTimeout:
                page.evaluate("() => window.cornerstone.getEnabledElements().forEach(e => e.viewport.render())")
        break
    raise AssertionError(f"OHIF drew no box of the SR {series_description!r}; console:\n" + "\n".join(console[-30:]))


def _state(page: Page) -> dict[str, Any]:
    time.sleep(SETTLE_S)
    return page.evaluate(VIEWPORT_STATE)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_sr_viewport_draws_the_boxes_of_the_image_it_shows(pacs: Pacs, site: str, session: Session,
                                                          language: str, tmp_path: Path) -> None:
    """Double-clicking an SR in OHIF's study browser opens its SR viewport: the image its first
    region references, with exactly that image's regions drawn (Tracking UIDs of the SR)."""
    sr, regions = pacs.srs[language], pacs.regions_in(language)
    page = _open_study(session, site, sr.StudyInstanceUID)
    _load_sr(page, sr.SeriesDescription, session.console)
    state = _state(page)
    shown = _sop_of(state["imageId"])
    on_image = {r.tracking_uid for r in regions if r.sop_instance_uid == shown}
    assert on_image, f"OHIF's SR viewport shows {shown}, an image without regions in the {language} SR"
    assert {b["uid"] for b in state["boxes"]} == on_image, (state, session.console[-20:])
    _save(page, tmp_path, f"ohif-{language}-sr-viewport", docs=language == "zh")
    # Our presentation states are listed, and (docs/sr-content.md says so) not applied: OHIF 3.13
    # has no GSPS support and says so with its "unsupported SOP Class" message.
    messages = page.evaluate(DISPLAY_SET_MESSAGES)
    assert messages.get("PR") == [UNSUPPORTED_SOP_CLASS_UID], messages
    session.assert_loopback_only()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_tracking_lists_each_region_by_name_on_its_image(pacs: Pacs, site: str, session: Session,
                                                         language: str, tmp_path: Path) -> None:
    """Accepting OHIF's offer to track an SR hydrates it into measurements: one per region, on its
    image and box (to a pixel), labelled with the finding's name; the measurement panel lists them
    by name, and selecting one shows its image with its box."""
    sr, regions = pacs.srs[language], pacs.regions_in(language)
    page = _open_study(session, site, sr.StudyInstanceUID)
    _load_sr(page, sr.SeriesDescription, session.console)
    page.locator("[data-cy=yes-hydrate-btn]").click()
    try:
        page.wait_for_function(f"() => window.services.measurementService.getMeasurements().length >= {len(regions)}",
                               timeout=30_000)
    except PlaywrightTimeout as exc:
        raise AssertionError(f"OHIF hydrated {len(page.evaluate(MEASUREMENTS))} of {len(regions)} {language} "
                             "regions; console:\n" + "\n".join(session.console[-30:])) from exc
    measurements = page.evaluate(MEASUREMENTS)
    assert len(measurements) == len(regions), measurements
    # Each box found by this language's prompts is named as its row says; a box only the other
    # language's prompt found is counted above (its name in this SR is the code's meaning here).
    for region in (r for r in regions if r.language == language):
        mine = [m for m in measurements if m["sop"] == region.sop_instance_uid and region.named_in(m["label"])
                and _bounds(m["pixels"]) == pytest.approx(region.box, abs=1.0)]
        assert mine, f"no measurement {region.names} at {region.box} on {region.sop_instance_uid}: {measurements}"

    page.locator("[data-cy=trackedMeasurements-btn]").click()  # opens the measurement panel
    rows = page.locator("[data-cy^=measurement-table-row-]")
    rows.first.wait_for()
    assert rows.count() == len(regions), page.locator("[data-cy=trackedMeasurements-panel]").inner_text()
    label_of = {m["uid"]: m["label"] for m in measurements}
    seen: list[tuple[str, str | None]] = []
    for index in range(rows.count()):
        title_cell = rows.nth(index).locator("[data-cy=data-row-title]")
        title = title_cell.inner_text()
        title_cell.click()  # OHIF jumps to a measurement when its title is clicked
        wanted = [uid for uid, label in label_of.items() if label == title]
        try:  # it may have to load another series first
            page.wait_for_function(BOX_DRAWN, arg=wanted, timeout=20_000)
        except PlaywrightTimeout as exc:
            state = _state(page)
            raise AssertionError(f"row {title!r} selected, the viewport shows {_sop_of(state['imageId'])} "
                                 f"with {[label_of.get(b['uid']) for b in state['boxes']]}") from exc
        seen.append((title, _sop_of(_state(page)["imageId"])))
        _save(page, tmp_path, f"ohif-{language}-measurement-{index + 1}", docs=(language, index + 1) in DOCS_ROWS)
    for region in (r for r in regions if r.language == language):
        assert any(region.named_in(title) and shown == region.sop_instance_uid for title, shown in seen), \
            f"no row of OHIF's measurement panel names {region.names} and shows {region.sop_instance_uid}: {seen}"
    session.assert_loopback_only()
