"""DCMTK's dsrdump reads every SR and shows both languages intact."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.peers.dcmtk import peer_env
from tests.sr_writer.samples import MODALITIES, REGION_SPECS, REPORT_TEXTS, content_for

pytestmark = pytest.mark.peers

#: The only diagnostic dsrdump may print: DCMTK's value checker does not know UTF-8.
KNOWN_DIAGNOSTICS = {"W: The VR checker does not support this Specific Character Set: ISO_IR 192"}


def dsrdump(path: Path) -> str:
    require_tool("dsrdump")
    result = subprocess.run(
        ["dsrdump", "+U8", "+Pl", "+Pt", "+Pu", str(path)],
        capture_output=True,
        env=peer_env(),
        timeout=60,
    )
    output = result.stdout.decode("utf-8") + result.stderr.decode("utf-8")
    assert result.returncode == 0, output
    diagnostics = {line for line in output.splitlines() if line[:3] in ("W: ", "E: ", "F: ")}
    assert diagnostics <= KNOWN_DIAGNOSTICS, diagnostics
    return output


@pytest.mark.parametrize("modality", MODALITIES)
def test_dsrdump_renders_both_languages(built, modality: str) -> None:
    sample = built[modality].sample
    en = dsrdump(built[modality].paths[("regions", "en")])
    zh = dsrdump(built[modality].paths[("regions", "zh")])
    for out in (en, zh):
        assert "Comprehensive 3D SR Document" in out
        assert "Verification Flag   : UNVERIFIED" in out
        assert "# TID 1500 (DCMR)" in out
        assert "POLYLINE" in out
    assert "Imaging Measurement Report - AI-generated, unverified" in en
    assert "影像测量报告（AI生成，未经审核）" in zh
    assert '(zh,RFC5646,"Chinese")' in zh and '(en,RFC5646,"English")' in en
    for text in REPORT_TEXTS["zh"]:
        assert f'="{text}"' in zh
    for text in REPORT_TEXTS["en"]:
        assert f'="{text}"' in en
    for _label_en, _label_zh, desc_en, desc_zh, _ in REGION_SPECS:
        if desc_zh:
            assert f'"Comment")="{desc_zh}"' in zh
            assert f'"Comment")="{desc_en}"' in en
    assert '(3341006,SCT,"右肺")' in zh and '(3341006,SCT,"Right lung")' in en
    assert '(363418001,SCT,"胰腺癌")' in zh
    assert '"奇怪阴影")' in zh
    for region in content_for(sample, "zh").regions:
        assert region.tracking_uid in zh and region.tracking_uid in en


def test_dsrdump_shows_the_no_findings_sentence(built) -> None:
    assert "算法未对本检查报告任何发现。" in dsrdump(built["CT"].paths[("empty", "zh")])
