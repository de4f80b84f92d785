"""dciodvfy (dicom3tools) finds zero errors in every SR we make, for every modality sample.

Warnings are printed (run pytest with -s, or see the failure message) and each must be
one explained in docs/sr-content.md.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_tool
from tests.peers.dciodvfy import validate
from tests.sr_writer.conftest import SCENARIOS
from tests.sr_writer.explained import DOC, EXPLAINED, unexplained
from tests.sr_writer.samples import MODALITIES

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_sr_has_zero_errors_and_only_explained_warnings(built, modality: str) -> None:
    require_tool("dciodvfy")
    require_tool("dcmconv")
    problems = []
    for (scenario, language), path in built[modality].paths.items():
        errors, warnings = validate(path)
        print(f"{modality} {scenario} {language}: {len(errors)} errors, warnings: {warnings}")
        if errors:
            problems.append(f"{scenario}/{language}: errors {errors}")
        if unexplained(warnings):
            problems.append(f"{scenario}/{language}: unexplained warnings {unexplained(warnings)}")
    assert len(built[modality].paths) == 2 * len(SCENARIOS)
    assert problems == []


def test_every_explained_warning_is_in_the_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    for identifier, _ in EXPLAINED:
        assert f"`{identifier}`" in text, f"{identifier} is not explained in {DOC.name}"


def test_validate_reports_errors_of_a_broken_file(built, tmp_path) -> None:
    """The helper must see errors, or a green run would prove nothing."""
    import pydicom

    require_tool("dciodvfy")
    ds = pydicom.dcmread(built["CT"].paths[("regions", "en")])
    del ds.CompletionFlag  # Type 1 in the SR Document General Module
    ds.ContentSequence[0].ValueType = "FOO"
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    errors, _ = validate(broken)
    assert any("CompletionFlag" in e for e in errors), errors
    assert any("FOO" in e for e in errors), errors
