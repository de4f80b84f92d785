"""Every prompt is a trained MedRegA task with its trained instruction verbatim; plans are validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.plans import PlanError, load_plans, plan_for, select_plan
from model.prompts import LAYOUTS, PromptError, prompt_library, render
from model.training import training_set


def test_every_reference_prompt_is_in_the_library_in_the_demo_layout(reference_lines: dict[int, dict]) -> None:
    covered = set()
    for prompt in prompt_library().values():
        for ref in prompt.references:
            human = reference_lines[ref["line"]]["conversations"][0]["value"]
            got = prompt.render("demo", **ref["slots"])
            lacks = ref.get("demo_lacks")
            if lacks:  # the demo's instruction lacks one trained sentence; we send the trained one
                assert lacks in prompt.instruction and lacks not in human
                got = got.replace(lacks, "", 1)
            assert got == human, prompt.id
            covered.add(ref["line"])
    assert covered == set(reference_lines), "a reference task has no prompt in the library"


def test_training_layout_puts_the_image_first_and_the_instruction_verbatim() -> None:
    for prompt in prompt_library().values():
        if prompt.training_set:
            assert prompt.instruction == training_set(prompt.training_set).base_prompt
        else:  # the mixture lists no Chinese set: the demo's wording, with its source
            assert prompt.language == "zh" and prompt.instruction_source.startswith("demo line")
    report = render("report_en")
    assert report == "<image>\n" + training_set("mimiccxr_train_rg").base_prompt + " "
    detection = render("detection_en", {"structures": ["liver"], "scan": "CT scan"})
    assert detection == ("<image>\n" + training_set("text2region").base_prompt
                         + " Please locate <ref>liver</ref> in this CT scan.")
    assert render("classify_chexpert_en").startswith("<image>\n" + training_set("chexpert_train_cls").base_prompt + " Please")
    assert render("report_en", layout="demo").endswith("final diagnosis. <image>\n")
    assert LAYOUTS == ("training", "demo")
    with pytest.raises(PromptError, match="layout"):
        render("report_en", layout="other")


def test_render_checks_slots() -> None:
    with pytest.raises(PromptError):
        render("report_zh", {"image": "x"})
    with pytest.raises(PromptError):
        render("grounded_report_en", {"structures": "right lung"})
    with pytest.raises(PromptError):
        render("region_to_text_en", {"box": [1, 2, 3, 1000], "scan": "CT scan"})
    with pytest.raises(PromptError):
        render("locate_describe_zh", {"structures": ["右肺"]})  # it asks about diseases
    with pytest.raises(PromptError):
        render("no_such_prompt")


def test_every_plan_prompt_is_a_trained_task_in_its_trained_language() -> None:
    plans = load_plans()
    assert plans[-1].name == "generic"
    used = set()
    for plan in plans:
        for p in plan.prompts:
            assert p.question.startswith("<image>\n") and p.question.count("<image>") == 1
            assert "{" not in p.question, f"unfilled slot in {plan.name}"
            prompt = prompt_library()[p.prompt_id]
            assert p.language == prompt.language and p.training_set == prompt.training_set
            assert prompt.instruction in p.question
            used.add(p.prompt_id)
            if p.task == "classification":
                assert p.training_set is not None and p.options == training_set(p.training_set).options
        assert plan.languages
    assert "locate_describe_zh" not in used, "the Chinese lesion prompt must not be filled with anatomy"
    assert {"report_en", "grounded_report_en", "classify_chexpert_en", "classify_vindrcxr_en", "report_zh",
            "detection_en", "classify_vindrmammo_en", "classify_vindrspinexr_en", "classify_mura_en",
            "classify_oct2017_en", "classify_isic2019_en", "classify_pannuke_en"} <= used


@pytest.mark.parametrize(
    ("modality", "body_part", "view", "plan", "sets"),
    [
        ("DX", "CHEST", "frontal", "chest-xray-frontal",
         {"mimiccxr_train_rg", "grounded_reports_mimiccxr", "chexpert_train_cls", "vindrcxr_train_cls"}),
        ("CR", "chest ", "lateral", "chest-xray-lateral", {"chexpert_train_cls"}),
        ("DX", "LSPINE", None, "spine-xray", {"vindrspinexr_train_cls"}),
        ("CR", "HAND", None, "msk-xray", {"mura_train_cls"}),
        ("MG", None, None, "mammography", {"vindrmammo_train_cls"}),
        ("CT", "CHEST", None, "chest-ct", {None, "text2region"}),
        ("CT", "ABDOMEN", None, "abdominal-ct", {None, "text2region"}),
        ("MR", "BRAIN", None, "mr", {None}),
        ("OPT", None, None, "oct", {"oct2017_train_cls"}),
        ("OP", None, None, "fundus", {"brest_train_cls", "rfmid_train_cls"}),
        ("XC", None, None, "dermoscopy", {"isic2019_train_cls", "padufes_train_cls"}),
        ("SM", None, None, "pathology", {"pannuke_train_cls", "pathcrc_norm"}),
        ("US", "ABDOMEN", None, "generic", {None}),
    ],
)
def test_plan_by_modality_body_part_and_view(modality, body_part, view, plan, sets) -> None:
    chosen = select_plan(modality, body_part, view=view)
    assert chosen.name == plan
    assert {p.training_set for p in chosen.prompts} == sets


def test_chest_ct_uses_lung_and_mediastinal_windows_and_describes_boxes() -> None:
    plan = select_plan("CT", "CHEST")
    assert {p.window for p in plan.prompts} == {"lung", "mediastinum"}
    assert plan.follow_up is not None
    q = plan.follow_up.planned((1, 2, 3, 4), "lung").question
    assert q.endswith("What is <ref>this</ref><box>[[1, 2, 3, 4]]</box> in this CT scan?")
    assert q.startswith("<image>\n" + training_set("region2text").base_prompt)


def test_demo_layout_plans(reference_lines) -> None:
    zh = [p for p in plan_for("CT", "HEAD", layout="demo") if p.task == "report"][0]
    assert zh.question == reference_lines[5]["conversations"][0]["value"]
    with pytest.raises(PlanError, match="prompt_layout"):
        load_plans(layout="sideways")


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "plans.toml"
    p.write_text(text, encoding="utf-8")
    return p


GOOD = """
[[plans]]
name = "knee"
modalities = ["CR"]
body_parts = ["KNEE"]
prompts = [
  { prompt = "detection_en", slots = { structures = ["fracture"], scan = "x-ray" } },
  { prompt = "vqa_short_en", slots = { question = "What does this image show?" } },
]
follow_up = { prompt = "region_to_text_en", slots = { scan = "x-ray" }, max_boxes = 2 }

[[plans]]
name = "any"
modalities = ["*"]
prompts = [{ prompt = "report_zh" }]
"""


def test_administrator_plans_file_is_used_and_validated(tmp_path: Path) -> None:
    prompts = plan_for("CR", "KNEE", _write(tmp_path / "good", GOOD))
    assert [p.task for p in prompts] == ["detection", "vqa"]
    bad = {
        "must match everything": GOOD.replace('modalities = ["*"]', 'modalities = ["CR"]'),
        "unknown prompt": GOOD.replace('"report_zh"', '"report_xx"'),
        "window": GOOD.replace('{ prompt = "report_zh" }', '{ prompt = "report_zh", window = "bright" }'),
        "needs a box": GOOD.replace('{ prompt = "report_zh" }', '{ prompt = "region_to_text_en", slots = { scan = "x" } }'),
        "diseases": GOOD.replace('{ prompt = "report_zh" }', '{ prompt = "locate_describe_zh", slots = { structures = ["右肺"] } }'),
        "views": GOOD.replace('body_parts = ["KNEE"]', 'body_parts = ["KNEE"]\nviews = ["sideways"]'),
    }
    for n, (message, text) in enumerate(bad.items()):
        with pytest.raises(PlanError, match=message):
            load_plans(_write(tmp_path / str(n), text))
    with pytest.raises(PlanError, match="not found"):
        load_plans(tmp_path / "nope.toml")
