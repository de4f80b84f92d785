"""The annotated picture (boxes on the real spool image) and the schema check at start-up."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.api.app import create_app
from gateway.api.regions import pair_regions
from gateway.api.render import ImageNotAvailableError, MIN_LONG_SIDE, resolve_spool_path
from sr_writer.render import find_cjk_font
from common.db import SchemaNotCurrentError

from .conftest import Env, make_settings
from .factories import COLUMNS, ROWS, make_study, make_windowed_ct_study


def test_cjk_font_is_installed() -> None:
    """The pages draw with the font render uses; make setup installs one (fonts-wqy-zenhei)."""
    assert find_cjk_font().is_file()


def test_annotated_png_has_the_boxes_drawn(client: TestClient, env: Env) -> None:
    with env.session() as s:
        rows = make_study(s, env.data_dir)
        s.commit()
    uid, sop = rows.study.study_instance_uid, rows.instance.sop_instance_uid
    r = client.get(f"/api/v1/studies/{uid}/instances/{sop}/annotated.png", headers=env.headers())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content)).convert("RGB")
    scale = MIN_LONG_SIDE / max(ROWS, COLUMNS)
    assert img.size == (round(COLUMNS * scale), round(ROWS * scale))
    # The left-lung box (region 1, red) is drawn where the finding says, in pixels of the image.
    f = next(f for f in rows.findings if f.label == "left lung")
    assert f.px_x1 is not None and f.px_x2 is not None and f.px_y2 is not None
    x = round((f.px_x1 + f.px_x2) / 2 * scale)
    y = round(f.px_y2 * scale) - 1
    assert img.getpixel((x, y)) == (0xFF, 0x52, 0x52)
    # Elsewhere the picture is grey (the DICOM pixels, windowed).
    pixel = img.getpixel((2, img.size[1] - 2))
    assert isinstance(pixel, tuple)
    r_, g, b = pixel
    assert r_ == g == b
    ev = env.audit_events()[-1]
    assert (ev.action, ev.rows, ev.study_instance_uid) == ("study.image", 3, uid)


def test_missing_or_escaping_spool_files_are_404(client: TestClient, env: Env, tmp_path: Path) -> None:
    with env.session() as s:
        rows = make_study(s, env.data_dir, write_image=False)
        s.commit()
    uid, sop = rows.study.study_instance_uid, rows.instance.sop_instance_uid
    r = client.get(f"/api/v1/studies/{uid}/instances/{sop}/annotated.png", headers=env.headers())
    assert r.status_code == 404 and "missing" in r.json()["detail"]
    assert env.audit_events()[-1].outcome == "failure"
    outside = tmp_path / "secret.dcm"
    outside.write_bytes(b"x")
    with pytest.raises(ImageNotAvailableError, match="outside"):
        resolve_spool_path(env.data_dir, "../secret.dcm")


def test_regions_pair_languages_by_code_then_box() -> None:
    from gateway.api.schemas import FindingOut

    def f(i: int, lang: str, label: str, code: str | None, box: list[float]) -> FindingOut:
        return FindingOut(id=i, created_at="2026-01-01T00:00:00Z", study_instance_uid="1.2",
                          study_date=None, calling_ae_title=None, modality="CR",
                          sop_instance_uid="1.2.3", frame_number=None, language=lang,
                          kind="region", label=label, code_value=code, code_scheme="SCT" if code else None,
                          code_meaning=None, text=None, box=[0, 0, 1, 1], box_px=box, unparsed=False,
                          job_id=1, study_version=1, model_name="m", model_version="1",
                          weights_id="w", delivery_status="sent")

    groups = pair_regions([
        f(1, "en", "left lung", "44029006", [10, 10, 50, 80]),
        f(2, "en", "nodule", None, [60, 60, 70, 70]),
        f(3, "zh-CN", "左肺", "44029006", [12, 11, 52, 79]),
        f(4, "zh", "结节", None, [60, 61, 70, 71]),
        f(5, "zh", "肝", None, [0, 0, 5, 5]),
    ])
    regions = groups[0].regions
    assert [(r.label("en"), r.label("zh")) for r in regions] == [
        ("left lung", "左肺"), ("nodule", "结节"), ("", "肝")]


def test_app_refuses_a_database_that_is_behind(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'old.db'}", tmp_path)
    with pytest.raises(SchemaNotCurrentError, match="db upgrade"):
        create_app(settings)


def test_a_study_whose_images_retention_removed_says_so(client: TestClient, env: Env) -> None:
    """The API's study, the annotated image and the study page say "images removed by retention on
    <date>" (issue 17); the findings stay."""
    from gateway.api.ui import COOKIE_NAME
    from workflow.retention import prune_spool

    with env.session() as s:
        rows = make_study(s, env.data_dir)
        s.commit()
        uid, sop = rows.study.study_instance_uid, rows.instance.sop_instance_uid
        spool_file = env.data_dir / rows.instance.path
        assert spool_file.is_file()
        report = prune_spool(s, env.data_dir, 30, now=rows.study.first_received_at + dt.timedelta(days=31))
    assert [p.study_instance_uid for p in report.studies] == [uid] and report.files == 1
    assert not spool_file.exists()

    study = client.get(f"/api/v1/studies/{uid}", headers=env.headers()).json()["study"]
    assert study["images_pruned_at"].startswith(
        (rows.study.first_received_at + dt.timedelta(days=31)).strftime("%Y-%m-%dT%H:%M"))
    assert study["images_note"].startswith(f"the images of study {uid} were removed by retention on")
    r = client.get(f"/api/v1/studies/{uid}/instances/{sop}/annotated.png", headers=env.headers())
    assert r.status_code == 404 and "removed by retention on" in r.json()["detail"]
    assert client.get("/api/v1/findings", params={"study_instance_uid": uid},
                      headers=env.headers()).json()["items"]  # the findings are kept

    page = TestClient(client.app)
    page.cookies.set(COOKIE_NAME, env.auditor_token)
    html = page.get(f"/ui/studies/{uid}").text
    assert "images removed by retention on" in html and f"instances/{sop}.png" not in html


def test_each_box_is_drawn_on_the_window_its_model_run_used(client: TestClient, env: Env) -> None:
    """Issue 12: a chest CT slice with a lung-window box (the lungs) and a mediastinal-window box
    (the heart), each finding linked to the model run that rendered the slice with its window. The
    API's annotated image and the study page's give one labelled panel per window, side by side,
    each box drawn on the pixels prepare_image gives for its window (and only there)."""
    import numpy as np
    import pydicom
    from gateway.api.render import PANEL_GAP
    from gateway.api.ui import COOKIE_NAME
    from model.imaging import prepare_image
    from tests.sr_writer.samples import WINDOW_BOXES, WINDOWED_CT_SIZE, inside

    with env.session() as s:
        rows = make_windowed_ct_study(s, env.data_dir)
        s.commit()
    uid, sop = rows.study.study_instance_uid, rows.instance.sop_instance_uid
    spool_ct = pydicom.dcmread(env.data_dir / rows.instance.path)
    model = {w: np.asarray(prepare_image(spool_ct, None, w).rgb) for w in ("lung", "mediastinum", None)}

    findings = client.get("/api/v1/findings", params={"study_instance_uid": uid}, headers=env.headers()).json()
    assert {(f["code_meaning"], f["window"]) for f in findings["items"]} == {
        ("right lung", "lung"), ("heart", "mediastinum")}

    page = TestClient(client.app)
    page.cookies.set(COOKIE_NAME, env.auditor_token)
    html = page.get(f"/ui/studies/{uid}").text
    assert "<td>lung</td>" in html and "<td>mediastinum</td>" in html
    for response in (client.get(f"/api/v1/studies/{uid}/instances/{sop}/annotated.png", headers=env.headers()),
                     page.get(f"/ui/studies/{uid}/instances/{sop}.png")):
        assert response.status_code == 200
        picture = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        size = WINDOWED_CT_SIZE  # 512: drawn at its own size, no scaling
        assert picture.shape[1] == 2 * size + PANEL_GAP  # two panels side by side
        top = picture.shape[0] - size  # under each panel's caption band
        panels = {"lung": picture[top:, :size], "mediastinum": picture[top:, size + PANEL_GAP:]}
        assert picture[:top].std() > 0  # the caption bands carry text
        for window, panel in panels.items():
            for box_window, box in WINDOW_BOXES.items():
                r, c = inside(box)
                x1, y1, x2, y2 = (int(v) for v in box)
                edge = panel[y1 + 5:y2 - 5, x2 - 1:x2 + 1]
                if box_window == window:
                    # the box is drawn (a colour) around the pixels the model saw
                    assert np.array_equal(panel[r, c], model[window][r, c]), window
                    assert not np.array_equal(panel[r, c], model[None][r, c])
                    assert (edge[..., 0] != edge[..., 1]).all()
                else:  # the other window's box is not drawn on this panel: the edge is the image
                    assert np.array_equal(edge, model[window][y1 + 5:y2 - 5, x2 - 1:x2 + 1]), window
