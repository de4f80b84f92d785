"""Shared helpers for tests/model: the reference folder beside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "medrega-reference" / "data_file.jsonl"


@pytest.fixture(scope="session")
def reference_lines() -> dict[int, dict]:
    """MedRegA's demo prompts and answers by line id; the test fails if the folder is missing."""
    if not REFERENCE.is_file():
        pytest.fail(f"MedRegA's reference prompts are missing: expected {REFERENCE}")
    lines = [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {d["id"]: d for d in lines}
