"""Continuity of Content SEPARATE where a renderer would otherwise run items together.

With CONTINUOUS content (PS3.3 C.17.3.2.2) DCMTK's dsr2html writes a container's children as one
sentence: a box's label, sizes and comment in one line, the report texts in one paragraph. With
SEPARATE each child gets its own block (``<div><b>concept:</b><br>value</div>``).
"""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from sr_writer import coding
from tests.conftest import require_tool
from tests.peers.dcmtk import peer_env
from tests.sr_writer.samples import REPORT_TEXTS, content_for

_CONTAINERS = {"126000": "report", "111028": "Image Library", "126200": "Image Library Group",
               "126010": "Imaging Measurements", "125007": "Measurement Group",
               "C0034375": "Qualitative Evaluations"}


def _containers(item: pydicom.Dataset):
    if item.get("ValueType") == "CONTAINER":
        yield item
    for child in item.get("ContentSequence", []) or []:
        yield from _containers(child)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_container_is_separate(built, language: str) -> None:
    ds = pydicom.dcmread(built["CR"].paths[("regions", language)])
    seen = set()
    for container in _containers(ds):
        code = container.ConceptNameCodeSequence[0].CodeValue
        seen.add(_CONTAINERS.get(code, code))
        assert container.ContinuityOfContent == "SEPARATE", _CONTAINERS.get(code, code)
    assert seen == set(_CONTAINERS.values())


def _dsr2html(path: Path, out: Path) -> str:
    result = subprocess.run([require_tool("dsr2html"), "+U8", str(path), str(out)],
                            capture_output=True, text=True, timeout=60, env=peer_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return out.read_text(encoding="utf-8")


def _blocks(page: str, concept: str) -> list[str]:
    """The values dsr2html renders as their own block under the heading ``concept``."""
    pattern = rf"<div>\s*<b>{re.escape(concept)}:</b><br>\s*(.*?)\s*(?:<p>|</div>)"
    return [html.unescape(re.sub(r"<[^>]+>", "", m)).strip() for m in re.findall(pattern, page, re.S)]


@pytest.mark.peers
@pytest.mark.parametrize("language", ["en", "zh"])
def test_dsr2html_shows_each_text_and_comment_on_its_own(built, tmp_path, language: str) -> None:
    sample = built["CT"].sample
    page = _dsr2html(built["CT"].paths[("regions", language)], tmp_path / f"{language}.html")
    # Each report text its own paragraph (not one run-on paragraph).
    assert _blocks(page, "Finding")[-len(REPORT_TEXTS[language]):] == REPORT_TEXTS[language]
    # Each box: its name and its description as separate comments, its sizes each on their own.
    comments = _blocks(page, "Comment")
    regions = content_for(sample, language).regions
    expected = []
    for region in regions:
        expected.append(coding.finding_code(region.label, region.code, language).meaning)
        if region.description:
            expected.append(region.description)
    assert comments == expected
    if sample.datasets[0].get("PixelSpacing"):
        assert len(_blocks(page, "Width")) == len(regions) == len(_blocks(page, "Area"))
