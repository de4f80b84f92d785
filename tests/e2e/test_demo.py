"""`medrega-gateway demo` (the README's first command runs it) works on embedded defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_prints_both_languages_with_pixel_boxes(tmp_path) -> None:
    keep = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "gateway", "demo", "--keep", str(keep), "--timeout-s", "240"],
                            capture_output=True, text=True, cwd=REPO, timeout=400)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "the PACS received 2 result objects" in out
    # Both languages, the replayed findings, boxes in pixels of the referenced image.
    assert "right lung" in out.lower() and "右肺" in out and "(pixels)" in out
    # Issue 14: trained tasks, coded classification in both languages, the prior study flagged.
    assert "Cardiomegaly" in out and "心脏增大" in out and "影像结论" in out
    findings = [line for line in out.splitlines() if line.strip().startswith("Finding:")]
    assert any(line.strip().startswith("Finding: Findings: The lungs are clear") for line in findings)
    assert not any("In comparison with" in line for line in findings)
    assert "refers to a prior study" in out and "既往检查" in out
    assert "[text in en]" in out and "[text in zh]" in out  # each text says its language (TID 1204)
    assert "UNVERIFIED" in out
    assert "replay" in out  # the SR names the backend that produced it, never MedRegA
    received = sorted((keep / "pacs").glob("*.dcm"))
    assert len(received) == 2
