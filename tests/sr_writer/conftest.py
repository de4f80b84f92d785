"""Fixtures of the sr_writer tests: sample studies and their SRs, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sr_writer.io import write_dataset
from sr_writer.report import build_sr
from tests.sr_writer.samples import MODALITIES, Sample, content_for, make_sample, one_language_content


@dataclass
class Built:
    """A sample study with the SRs written for it (key: scenario name and language)."""

    sample: Sample
    paths: dict[tuple[str, str], Path]


#: Scenarios every modality is built in: several regions with several boxes each, report
#: text only (no region at all), nothing at all, the same regions from a test model, and tasks
#: trained in one language (texts in the other language marked, a coded image-level finding,
#: notes about a cut-off answer and a sentence left out; issue 14).
SCENARIOS = ("regions", "text-only", "empty", "test-model", "one-language-tasks")


def _content(sample: Sample, scenario: str, language: str):
    from tests.sr_writer.samples import TINY

    if scenario == "regions":
        return content_for(sample, language)
    if scenario == "text-only":
        return content_for(sample, language, regions=[])
    if scenario == "empty":
        return content_for(sample, language, regions=[], texts=[])
    if scenario == "test-model":
        return content_for(sample, language, algorithm=TINY)
    if scenario == "one-language-tasks":
        return one_language_content(sample, language)
    raise AssertionError(scenario)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every modality's sample and its SR files, by modality."""
    root = tmp_path_factory.mktemp("sr_writer")
    result: dict[str, Built] = {}
    for modality in MODALITIES:
        sample = make_sample(modality, root / modality / "images")
        paths: dict[tuple[str, str], Path] = {}
        for scenario in SCENARIOS:
            for language in ("en", "zh"):
                sr = build_sr(_content(sample, scenario, language))
                paths[(scenario, language)] = write_dataset(
                    sr, root / modality / f"sr_{scenario}_{language}.dcm"
                )
        result[modality] = Built(sample, paths)
    return result
