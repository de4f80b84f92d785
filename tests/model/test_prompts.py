"""The prompt library is MedRegA's wording; plans are complete and validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.plans import PlanError, load_plans, plan_for
from model.prompts import LANGUAGES, REGION_TASKS, PromptError, prompt_library, render


def test_every_reference_prompt_is_in_the_library(reference_lines: dict[int, dict]) -> None:
    covered = set()
    for prompt in prompt_library().values():
        assert prompt.references, f"{prompt.id} cites no reference line"
        for ref in prompt.references:
            human = reference_lines[ref["line"]]["conversations"][0]["value"]
            assert prompt.render(**ref["slots"]) == human, prompt.id
            covered.add(ref["line"])
    assert covered == set(reference_lines), "a reference task has no prompt in the library"


def test_library_has_report_and_region_prompts_in_both_languages() -> None:
    for language in LANGUAGES:
        tasks = {p.task for p in prompt_library().values() if p.language == language}
        assert "report" in tasks
        assert tasks & REGION_TASKS


def test_render_checks_slots() -> None:
    with pytest.raises(PromptError):
        render("report_en", {})
    with pytest.raises(PromptError):
        render("report_zh", {"image": "x"})
    with pytest.raises(PromptError):
        render("grounded_report_en", {"image": "chest x-ray image", "structures": "right lung"})
    with pytest.raises(PromptError):
        render("region_to_text_en", {"box": [1, 2, 3, 1000], "scan": "CT scan"})
    with pytest.raises(PromptError):
        render("no_such_prompt")


def test_every_plan_has_report_and_region_per_language() -> None:
    plans = load_plans()
    assert plans[-1].name == "generic"
    for plan in plans:
        for language in LANGUAGES:
            tasks = [p.task for p in plan.prompts if p.language == language]
            assert tasks.count("report") == 1, plan.name
            assert sum(t in REGION_TASKS for t in tasks) >= 1, plan.name
        for p in plan.prompts:
            assert p.question.count("<image>") == 1
            assert "{" not in p.question, f"unfilled slot in {plan.name}"


@pytest.mark.parametrize(
    ("modality", "body_part", "plan_words"),
    [
        ("DX", "CHEST", ["chest x-ray image", "<ref>right lung</ref>", "<ref>heart</ref>", "<ref>mediastinum</ref>", "<ref>pleura</ref>"]),
        ("CR", "chest ", ["chest x-ray image"]),
        ("MR", "BRAIN", ["brain MRI image"]),
        ("CT", "ABDOMEN", ["CT image of the abdomen", "<ref>胰腺</ref>"]),
        ("OP", None, ["fundus image", "<ref>视盘</ref>"]),
        ("US", "ABDOMEN", ["medical image"]),
        (None, None, ["medical image"]),
    ],
)
def test_plan_for_matches_modality_and_body_part(modality, body_part, plan_words) -> None:
    prompts = plan_for(modality, body_part)
    joined = "\n".join(p.question for p in prompts)
    for words in plan_words:
        assert words in joined
    assert {(p.language, p.task == "report") for p in prompts} == {("en", True), ("en", False), ("zh", True), ("zh", False)}


def test_chest_xray_english_report_prompt_is_the_reference_one(reference_lines) -> None:
    report = [p for p in plan_for("DX", "CHEST") if p.language == "en" and p.task == "report"][0]
    assert report.question == reference_lines[4]["conversations"][0]["value"]
    zh = [p for p in plan_for("CT", "HEAD") if p.language == "zh" and p.task == "report"][0]
    assert zh.question == reference_lines[5]["conversations"][0]["value"]


PLAN_HEAD = """
[[plans]]
name = "any"
modalities = ["*"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plans.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_administrator_plans_file_is_used_and_validated(tmp_path: Path) -> None:
    good = PLAN_HEAD + """
[plans.en]
report = { prompt = "report_en", slots = { image = "knee x-ray image" } }
region = { prompt = "detection_en", slots = { structures = ["fracture"], scan = "x-ray" } }
[plans.zh]
report = { prompt = "report_zh" }
region = { prompt = "locate_describe_zh", slots = { structures = ["骨折"] } }
[[plans.extra]]
prompt = "vqa_short_en"
language = "en"
slots = { question = "What does this image show?" }
"""
    prompts = plan_for("CR", "KNEE", _write(tmp_path, good))
    assert [p.task for p in prompts] == ["report", "detection", "report", "locate_describe", "vqa"]
    assert "knee x-ray image" in prompts[0].question

    missing_zh_region = good.replace('region = { prompt = "locate_describe_zh", slots = { structures = ["骨折"] } }', "")
    with pytest.raises(PlanError, match="zh has no region"):
        load_plans(_write(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path, missing_zh_region))
    wrong_language = good.replace('report = { prompt = "report_zh" }', 'report = { prompt = "report_en", slots = { image = "x" } }')
    (tmp_path / "b").mkdir()
    with pytest.raises(PlanError, match="is in 'en'"):
        load_plans(_write(tmp_path / "b", wrong_language))
    (tmp_path / "c").mkdir()
    with pytest.raises(PlanError, match="must match everything"):
        load_plans(_write(tmp_path / "c", good.replace('modalities = ["*"]', 'modalities = ["CR"]')))
    with pytest.raises(PlanError, match="not found"):
        load_plans(tmp_path / "nope.toml")
