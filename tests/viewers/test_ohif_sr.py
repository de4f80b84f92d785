"""OHIF's own code loads the SRs of an end-to-end run: every region hydrates, named, in both languages.

An end-to-end run (replay backend, DCMTK storescu -> ``serve`` -> storescp) writes the SRs; Orthanc
with its DICOMweb plugin holds them with the study, as a site's PACS behind OHIF would; its
metadata answers (DICOM JSON) are what OHIF's DICOMweb data source reads. ``ohif/load_sr.mjs`` runs,
under Node, the code OHIF runs in the browser (``@ohif/extension-cornerstone-dicom-sr`` 3.13.13,
``@cornerstonejs/adapters`` 5.6.8, pinned in ``ohif/package-lock.json``, installed by
``scripts/setup.sh``):

* the SR SOP Class Handler's load: the SR viewport's measurements, placed on their images, with the
  text its DICOMSRDisplay tool draws next to each box;
* ``hydrateStructuredReport`` (``MeasurementReport.generateToolState``): the "track" step that turns
  every region into a measurement; its label is what the measurement panel and the viewport show.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.conftest import require_tool
from tests.e2e.test_end_to_end import _run_scenario, file_of
from tests.peers.orthanc import Orthanc, orthanc

pytestmark = [pytest.mark.peers, pytest.mark.slow]

OHIF = Path(__file__).with_name("ohif")
FINDING_SITE = "363698007"  # the label OHIF's SR viewport gives the Finding Site line
CJK = re.compile(r"[\u4e00-\u9fff]")


def _ohif(paths_sr: list[Path], paths_images: list[Path]) -> list[dict]:
    node = require_tool("node")
    if not (OHIF / "node_modules" / "@ohif" / "extension-cornerstone-dicom-sr").is_dir():
        pytest.fail(f"OHIF's packages are not installed in {OHIF}: run `make setup` (npm ci there)")
    run = subprocess.run(
        [node, str(OHIF / "load_sr.mjs"), *map(str, paths_sr), "--", *map(str, paths_images)],
        capture_output=True, text=True, timeout=180, cwd=OHIF,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)["results"]


def _dicomweb_metadata(pacs: Orthanc, ds: pydicom.Dataset, folder: Path) -> Path:
    """The instance's DICOM JSON as Orthanc's DICOMweb plugin serves it to a viewer."""
    answer = pacs.rest(
        "GET",
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/metadata",
    )
    [instance] = json.loads(answer) if isinstance(answer, bytes) else answer
    path = folder / f"{ds.SOPInstanceUID}.json"
    path.write_text(json.dumps(instance), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One end-to-end run, its objects in Orthanc, and what OHIF's code made of them."""
    tmp = tmp_path_factory.mktemp("ohif")
    result = _run_scenario(tmp / "e2e", backend="replay", gsps_destination=True)
    objects = [pydicom.dcmread(f) for f in result["viewer_files"]]
    srs = {_language(ds): ds for ds in objects if ds.Modality == "SR"}
    assert sorted(srs) == ["en", "zh"]
    images = [pydicom.dcmread(f, stop_before_pixels=True) for f in result["sample"].files]
    json_folder = tmp / "dicomweb"
    json_folder.mkdir()
    with orthanc(tmp / "orthanc", dicomweb=True) as pacs:
        for path in [*result["sample"].files, *(file_of(ds) for ds in srs.values())]:
            pacs.upload(path)
        sr_json = {lang: _dicomweb_metadata(pacs, ds, json_folder) for lang, ds in srs.items()}
        image_json = [_dicomweb_metadata(pacs, ds, json_folder) for ds in images]
    languages = ["en", "zh"]
    over_dicomweb = _ohif([sr_json[lang] for lang in languages], image_json)
    local_files = _ohif([file_of(srs[lang]) for lang in languages], list(result["sample"].files))
    return {
        "result": result,
        "srs": srs,
        "dicomweb": dict(zip(languages, over_dicomweb)),
        "files": dict(zip(languages, local_files)),
    }


def _language(ds: pydicom.Dataset) -> str:
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121049":  # Language of Content Item
            return str(item.ConceptCodeSequence[0].CodeValue)
    raise AssertionError("SR without a language")


def _regions(sr: pydicom.Dataset) -> dict[str, tuple[str, int, str, str | None]]:
    """Tracking UID -> (image, frame, Finding's meaning, Finding Site's meaning) as the SR says."""
    regions = {}
    for container in sr.ContentSequence:
        for group in container.get("ContentSequence", []):
            if group.ConceptNameCodeSequence[0].CodeValue != "125007":  # Measurement Group
                continue
            items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
            roi = items["111030"].ContentSequence[0].ReferencedSOPSequence[0]  # Image Region
            site = items.get(FINDING_SITE)
            regions[str(items["112040"].UID)] = (
                str(roi.ReferencedSOPInstanceUID),
                int(roi.get("ReferencedFrameNumber", 1)),
                str(items["121071"].ConceptCodeSequence[0].CodeMeaning),
                str(site.ConceptCodeSequence[0].CodeMeaning) if site else None,
            )
    return regions


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_region_hydrates_on_its_image_named(run: dict, language: str) -> None:
    """The "track" step: one RectangleROI measurement per region, on its image and frame,
    labelled with the finding's name in the SR's language."""
    ohif = run["dicomweb"][language]
    expected = _regions(run["srs"][language])
    assert expected, "the run wrote no regions"
    assert ohif["isRehydratable"] is True
    assert not ohif.get("hydrationError"), ohif.get("hydrationError")
    assert not [w for w in ohif["warnings"] if "Unable to generate tool state" in w], ohif["warnings"]
    # OHIF keeps no Tracking UID on the measurements it hydrates: compare image, frame and label.
    hydrated = sorted((m["sopInstanceUID"], m["frameNumber"], m["label"]) for m in ohif["hydrated"])
    assert hydrated == sorted((image, frame, finding) for image, frame, finding, _ in expected.values())
    for measurement in ohif["hydrated"]:
        assert measurement["annotationType"] == "RectangleROI"
        assert measurement["finding"] == measurement["label"]  # the Finding code's meaning
        assert len(measurement["points"]) == 4  # the box's corners, in world coordinates
    if language == "zh":
        assert all(CJK.search(m["label"]) for m in ohif["hydrated"]), [m["label"] for m in ohif["hydrated"]]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_sr_viewport_draws_every_box_with_its_text(run: dict, language: str) -> None:
    """The SR viewport (before tracking): each box on its image, its text from the NUMs (sizes)
    and the Finding Site (anatomy), the only items OHIF's DICOMSRDisplay tool writes."""
    ohif = run["dicomweb"][language]
    expected = _regions(run["srs"][language])
    assert ohif["isImagingMeasurementReport"] is True
    shown = {m["trackingUniqueIdentifier"]: m for m in ohif["displayed"]}
    assert set(shown) == set(expected)
    for tracking_uid, (image, frame, _, site) in expected.items():
        measurement = shown[tracking_uid]
        assert measurement["loaded"] is True
        assert (measurement["sopInstanceUID"], measurement["frameNumber"]) == (image, frame)
        sites = [label["value"] for label in measurement["labels"] if label["label"] == FINDING_SITE]
        assert sites == ([site] if site else [])
    # The reference answers name the lungs (anatomy): their boxes are labelled in the viewport.
    labelled = [label["value"] for m in ohif["displayed"] for label in m["labels"] if label["label"] == FINDING_SITE]
    assert labelled, "no box of the run carries a Finding Site"
    referenced = {item["ReferencedSOPInstanceUID"] for item in ohif["referencedImages"]}
    assert {image for image, *_ in expected.values()} <= referenced  # the Image Library


def test_chinese_text_decodes_over_dicomweb(run: dict) -> None:
    """dcmjs naturalizes Orthanc's UTF-8 JSON: the title and every label come out as pydicom
    reads them from our bytes, in Chinese characters."""
    ohif = run["dicomweb"]["zh"]
    title = run["srs"]["zh"].ConceptNameCodeSequence[0].CodeMeaning
    assert ohif["title"] == title and CJK.search(title)
    written = sorted(finding for _, _, finding, _ in _regions(run["srs"]["zh"]).values())
    shown = sorted(m["label"] for m in ohif["hydrated"])
    assert shown == written and all(CJK.search(label) for label in shown)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_local_files_hydrate_too(run: dict, language: str) -> None:
    """OHIF's local-file path (dcmjs reads the Part 10 bytes) finds the same regions on the same
    images. Its text is right for English only: dcmjs 0.52 decodes text inside sequence items
    as Latin-1 whatever the Specific Character Set (dcmjs issues #503, #508), so every UTF-8 SR
    opened from a local file shows mojibake there; docs/sr-content.md says so."""
    by_file = sorted((m["sopInstanceUID"], m["frameNumber"]) for m in run["files"][language]["hydrated"])
    over_web = sorted((m["sopInstanceUID"], m["frameNumber"]) for m in run["dicomweb"][language]["hydrated"])
    assert by_file == over_web and by_file
    if language == "en":
        assert sorted(m["label"] for m in run["files"]["en"]["hydrated"]) == sorted(
            m["label"] for m in run["dicomweb"]["en"]["hydrated"])
