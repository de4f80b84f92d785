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
    assert "UNVERIFIED" in out
    assert "replay" in out  # the SR names the backend that produced it, never MedRegA
    received = sorted((keep / "pacs").glob("*.dcm"))
    assert len(received) == 2
