"""``medrega-gateway render`` through the real CLI (issue 12): an SR written before regions named
their CT window is drawn with the window of the model run that found each box, from the findings
database of the config; without the database the boxes fall back to the image's own window."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom

from common.db import session_scope
from common.settings import load_settings
from sr_writer.content import ReportContent
from sr_writer.io import write_dataset
from sr_writer.readback import read_report
from sr_writer.report import build_sr
from tests.api.factories import make_windowed_ct_study
from tests.e2e.harness import cli, free_port, write_config
from tests.sr_writer.samples import MEDREGA, WHEN, windowed_regions
from tests.sr_writer.test_windows import assert_each_box_on_its_window


def test_render_takes_the_windows_an_older_sr_lacks_from_the_findings_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    cli(config, "db", "upgrade")
    settings = load_settings(config, environ={})
    with session_scope(settings.database_url) as s:
        rows = make_windowed_ct_study(s, settings.data_dir)
        spool_path = settings.data_dir / rows.instance.path
    ct = pydicom.dcmread(spool_path)
    header = pydicom.dcmread(spool_path, stop_before_pixels=True)
    regions = [dataclasses.replace(r, window=None) for r in windowed_regions(ct, "en")]  # as SRs were
    content = ReportContent(language="en", evidence=[header], report_texts=[], regions=regions,
                            algorithm=MEDREGA, study_version=1, content_datetime=WHEN,
                            institution_name="Test Hospital")
    (tmp_path / "results").mkdir()
    sr = write_dataset(build_sr(content), tmp_path / "results" / "sr_en.dcm")  # not next to the image
    assert {r.window for r in read_report(pydicom.dcmread(sr)).regions} == {None}

    out = tmp_path / "ct.png"
    done = cli(config, "render", str(sr), "--out", str(out))
    assert "wrote" in done.stdout, done.stdout + done.stderr
    assert_each_box_on_its_window(out, ct)


def test_without_a_readable_database_render_warns_and_uses_the_image_window(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from common.uids import derive_uid
    from model.imaging import prepare_image
    from tests.sr_writer.samples import WINDOW_BOXES, inside, windowed_chest_ct

    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[],
                          database_url=f"sqlite:///{tmp_path / 'missing' / 'no.db'}")  # a folder that is not there
    folder = tmp_path / "study"
    folder.mkdir()
    ct = windowed_chest_ct(*(derive_uid("cli-render", part) for part in ("study", "series", "image")))
    ct.save_as(folder / "ct.dcm", enforce_file_format=True)
    ct = pydicom.dcmread(folder / "ct.dcm")
    regions = [dataclasses.replace(r, window=None) for r in windowed_regions(ct, "en")]
    content = ReportContent(language="en", evidence=[pydicom.dcmread(folder / "ct.dcm", stop_before_pixels=True)],
                            report_texts=[], regions=regions, algorithm=MEDREGA, study_version=1,
                            content_datetime=WHEN, institution_name="Test Hospital")
    sr = write_dataset(build_sr(content), folder / "sr_en.dcm")
    out = tmp_path / "ct.png"
    done = cli(config, "render", str(sr), "--out", str(out))
    assert "findings database not readable" in done.stderr, done.stdout + done.stderr
    pixels = np.asarray(Image.open(out).convert("RGB"))
    own = np.asarray(prepare_image(ct).rgb)  # the header window: one panel, both boxes on it
    rows, columns = inside(WINDOW_BOXES["mediastinum"])
    top = pixels.shape[0] - own.shape[0]
    assert np.array_equal(pixels[top + rows.start:top + rows.stop, columns], own[rows, columns])
    assert not (tmp_path / "missing").exists()  # the look-up created no database
