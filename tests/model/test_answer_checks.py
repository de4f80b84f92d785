"""Classification answers mapped to trained options; report sentences screened; truncation seen."""

from __future__ import annotations

import numpy as np
import pytest

from model.checks import DEID_BLANK, PRIOR_STUDY, screen_text
from model.classification import bleu1, map_answer, option_name_zh
from sr_writer.coding import coded_option
from model.training import training_set, training_sets

CHEXPERT = training_set("chexpert_train_cls").options


@pytest.mark.parametrize(
    ("answer", "option"),
    [
        ("Pleural Effusion", "Pleural Effusion"),
        ("pleural effusion.", "Pleural Effusion"),
        ("The image shows cardiomegaly", "Cardiomegaly"),
        ("no finding", "No Finding"),
        ("Lung", "Lung Opacity"),  # first listed among equal scores
    ],
)
def test_map_answer_picks_the_highest_bleu1_option(answer: str, option: str) -> None:
    mapped = map_answer(answer, CHEXPERT)
    assert mapped is not None and mapped.option == option


def test_map_answer_none_and_bleu1_definition() -> None:
    assert map_answer("xyz", CHEXPERT) is None
    assert map_answer("", CHEXPERT) is None
    assert bleu1("pleural effusion", "Pleural Effusion") == 1.0
    # one of two words, shorter than the reference: precision 1, brevity penalty exp(1 - 2/1)
    assert bleu1("pleural", "Pleural Effusion") == pytest.approx(np.exp(-1))
    exact, reordered = map_answer("Pleural Effusion", CHEXPERT), map_answer("effusion pleural x", CHEXPERT)
    assert exact is not None and exact.exact and reordered is not None and not reordered.exact


def test_every_option_of_the_shipped_plans_is_coded_in_both_languages() -> None:
    from model.plans import load_plans

    sets = {p.training_set for plan in load_plans() for p in plan.prompts if p.task == "classification"}
    for name in sets:
        assert name is not None, "a classification prompt names its training set"
        for option in training_sets()[name].options:
            assert option_name_zh(option), f"{name}: {option!r} has no Chinese name"
            en, zh = coded_option(option, "en"), coded_option(option, "zh")
            assert en[:2] == zh[:2] and en[1] in ("SCT", "99MEDREGA")
            assert any("\u4e00" <= ch <= "\u9fff" for ch in zh[2]), zh
    assert coded_option("Pleural Effusion", "zh") == ("60046008", "SCT", "胸腔积液")
    assert coded_option("Support Devices", "en")[1:] == ("99MEDREGA", "Support Devices")
    assert coded_option("Support Devices", "zh")[2] == "支持装置"


def test_screen_removes_prior_references_and_deidentification_blanks() -> None:
    demo = ("Findings: In comparison with the study of ___, there is little overall change. Continued enlargement "
            "of the cardiac silhouette. Central catheter remains in place.")
    screened = screen_text(demo)
    assert screened.text == "Findings: Continued enlargement of the cardiac silhouette. Central catheter remains in place."
    assert [(r.sentence, r.reason) for r in screened.removed] == [
        ("In comparison with the study of ___, there is little overall change.", PRIOR_STUDY)]
    text = "FINDINGS: Dr. ___ was paged at ___. A 3.5 cm nodule.\nIMPRESSION: No change since prior."
    screened = screen_text(text)
    assert screened.text == "FINDINGS: A 3.5 cm nodule."
    assert [r.reason for r in screened.removed] == [DEID_BLANK, PRIOR_STUDY]
    zh = screen_text("影像诊断：双肺纹理清晰。较前片病灶缩小。影像结论：未见异常。")
    assert zh.text == "影像诊断：双肺纹理清晰。影像结论：未见异常。" and zh.removed[0].reason == PRIOR_STUDY
    clean = "No focal consolidation, pleural effusion, or pneumothorax is seen."
    assert screen_text(clean).text == clean and screen_text(clean).removed == ()


def test_engine_backend_marks_an_answer_without_im_end_truncated() -> None:
    from PIL import Image

    from model.backends.base import EngineBackend, GenerationRequest

    class Engine:  # what InternVLEngine returns: new ids, cut after <|im_end|> when reached
        eos_token_id = 4

        def generate_ids(self, questions, images, max_new_tokens=None, *, batch_size=None, progress=None):
            return [[7, 8, 4], [7, 8, 9]][: len(questions)]

        def decode_answer(self, ids):
            return " ".join(str(i) for i in ids if i != 4)

    class Backend(EngineBackend):
        identity = None  # type: ignore[assignment]  # a stub: the code under test never reads it

        def __init__(self) -> None:
            self.engine, self.batch_size = Engine(), 2

    image = Image.new("RGB", (8, 8))
    answers = Backend().generate_answers([GenerationRequest(image, "q", "en")] * 2)
    assert [(a.text, a.truncated) for a in answers] == [("7 8", False), ("7 8 9", True)]
    assert Backend().generate([GenerationRequest(image, "q", "en")]) == ["7 8"]
