"""A generated labelled set (DICOM and PNG cases, English and Chinese, every task) with replay
answers, and the metrics it must give, worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.training import training_set
from tests.model.model_factory import grey_dataset, write

DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _dicom(folder: Path, name: str, **kwargs: Any) -> tuple[str, str]:
    """Write a DICOM image into folder/images; return (relative path, SOP Instance UID)."""
    size = kwargs.pop("size", (999, 999))
    image_type = kwargs.pop("image_type", ["ORIGINAL", "PRIMARY", "AXIAL"])
    view = kwargs.pop("view_position", None)
    pixels = (np.arange(size[0] * size[1]).reshape(size) % 2000).astype(np.int16)
    ds = grey_dataset(pixels, **kwargs)
    ds.ImageType = image_type
    if view:
        ds.ViewPosition = view
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = write(ds, images)
    target = images / f"{name}.dcm"
    path.rename(target)
    return f"images/{name}.dcm", str(ds.SOPInstanceUID)


def _png(folder: Path, name: str, width: int, height: int) -> str:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(images / f"{name}.png")
    return f"images/{name}.png"


def build(folder: Path, *, better_detection: bool = False) -> dict[str, Any]:
    """Write cases.jsonl, the pictures and answers.jsonl (replay) into ``folder``.

    ``better_detection``: the replay answers every detection case exactly (a second run that
    must show detection metrics moving).
    """
    ct, ct_uid = _dicom(folder, "ct", modality="CT", body_part="ABDOMEN")
    ct_loc, _ = _dicom(folder, "ct-localizer", modality="CT", body_part="ABDOMEN",
                       image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    dx, dx_uid = _dicom(folder, "dx", modality="DX", sop_class_uid=DX_IMAGE, body_part="CHEST",
                        view_position="PA", rescale=None, image_type=["ORIGINAL", "PRIMARY"], size=(300, 200))
    ct_png = _png(folder, "ct-picture", 200, 100)
    cxr_png = _png(folder, "cxr-picture", 240, 300)
    (folder / "images" / "broken.dcm").write_bytes(b"this is not a DICOM file")
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    chexpert = list(training_set("chexpert_train_cls").options)

    cases: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []

    def case(**c: Any) -> None:
        cases.append(c)

    def answer(text: str, uid: str, contains: str | None = None, **keys: Any) -> None:
        entry = {"answer": text, "sop_instance_uid": uid, **keys}
        if contains:
            entry["prompt_contains"] = contains
        answers.append(entry)

    # -- detection (English, CT): three one-box cases and one with several boxes ------------
    case(id="det-liver", image=ct, task="detection", language="en", structures=["liver"],
         reference={"boxes": {"liver": [[0, 0, 100, 100]]}})
    case(id="det-spleen", image=ct, task="detection", language="en", structures=["spleen"],
         reference={"boxes": {"spleen": [[0, 0, 100, 100]]}})
    case(id="det-png", image=ct_png, task="detection", language="en", structures=["liver"], modality="CT",
         body_part="ABDOMEN", reference={"boxes": {"liver": [[0, 0, 499, 999]]}})
    case(id="det-kidneys", image=ct, task="detection", language="en", structures=["right kidney", "left kidney"],
         reference={"boxes": {"right kidney": [[0, 0, 100, 100]], "left kidney": [[200, 200, 300, 300]]}})
    if better_detection:
        answer("<ref>liver</ref><box>[[0, 0, 100, 100]]</box>", ct_uid, "<ref>liver</ref>")
        answer("<ref>spleen</ref><box>[[0, 0, 100, 100]]</box>", ct_uid, "<ref>spleen</ref>")
        answer("<ref>liver</ref><box>[[0, 0, 499, 999]]</box>", "det-png", "<ref>liver</ref>")
        answer("<ref>right kidney</ref><box>[[0, 0, 100, 100]]</box>, <ref>left kidney</ref><box>[[200, 200, 300, 300]]</box>",
               ct_uid, "<ref>right kidney</ref>")
    else:
        answer("<ref>liver</ref><box>[[50, 0, 150, 100]]</box>", ct_uid, "<ref>liver</ref>")
        answer("<ref>spleen</ref><box>[[0, 0, 100, 100]]</box>", ct_uid, "<ref>spleen</ref>")
        answer("<ref>liver</ref><box>[[0, 0, 499, 499]]</box>", "det-png", "<ref>liver</ref>")
        answer("<ref>right kidney</ref><box>[[0, 0, 100, 50]]</box>, <ref>left kidney</ref><box>[[250, 200, 350, 300]]</box>, "
               "<ref>left kidney</ref><box>[[600, 600, 700, 700]]</box>", ct_uid, "<ref>right kidney</ref>")

    # -- region to text (English, CT) ---------------------------------------------------------
    case(id="r2t-liver", image=ct, task="region_to_text", language="en", box=[0, 0, 100, 100],
         reference={"text": "liver"})
    case(id="r2t-kidney", image=ct, task="region_to_text", language="en", box=[200, 200, 300, 300],
         reference={"text": "left kidney"})
    answer("liver", ct_uid, "[0, 0, 100, 100]")
    answer("kidney", ct_uid, "[200, 200, 300, 300]")

    # -- reports --------------------------------------------------------------------------------
    case(id="rep-en-dx", image=dx, task="report", language="en", reference={"text": "Heart is normal."})
    case(id="rep-en-png", image=cxr_png, task="report", language="en", modality="DX", body_part="CHEST",
         view="frontal", reference={"text": "no effusion"})
    answer("Heart normal.", dx_uid, "report generation")
    answer("No effusion", "rep-en-png", "report generation")
    case(id="rep-zh-ct", image=ct, task="report", language="zh", reference={"text": "肝脏未见明显异常"})
    case(id="rep-zh-png", image=ct_png, task="report", language="zh", modality="CT", body_part="ABDOMEN",
         reference={"text": "肝脏未见明显异常"})
    answer("肝脏未见异常", ct_uid, None, language="zh")
    answer("肝脏未见明显异常", "rep-zh-png", None, language="zh")

    # -- grounded report (English, chest DX) ---------------------------------------------------
    case(id="grounded", image=dx, task="grounded_report", language="en", structures=["right lung"],
         reference={"text": "The right lung is clear.", "boxes": {"right lung": [[100, 100, 480, 900]]}})
    answer("<ref>right lung</ref><box>[[100, 100, 480, 900]]</box>: The right lung is clear.", dx_uid,
           "report phrase grounding")

    # -- classification (English, chest: CheXpert's trained options) ---------------------------
    for label, said, image, uid in [
        ("Cardiomegaly", "Cardiomegaly.", dx, dx_uid),
        ("Pleural Effusion", "pleural effusion", cxr_png, "cls-2"),
        ("Cardiomegaly", "No finding", cxr_png, "cls-3"),
        ("No Finding", "effusion", cxr_png, "cls-4"),
    ]:
        extra = {} if image == dx else {"modality": "DX", "body_part": "CHEST", "view": "frontal"}
        cid = "cls-1" if image == dx else uid
        case(id=cid, image=image, task="classification", language="en", options=chexpert,
             reference={"label": label}, **extra)
        answer(said, uid, None, training_set="chexpert_train_cls")

    # -- cases that must be reported and not counted ------------------------------------------
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    problems = [
        ("invalid", "{not json"),
        ("unreadable", json.dumps({"id": "missing", "image": "images/none.dcm", "task": "report", "language": "en",
                                   "reference": {"text": "x"}})),
        ("unreadable", json.dumps({"id": "broken-dcm", "image": "images/broken.dcm", "task": "report",
                                   "language": "en", "reference": {"text": "x"}})),
        ("unreadable", json.dumps({"id": "broken-png", "image": "images/broken.png", "task": "report",
                                   "language": "en", "modality": "DX", "body_part": "CHEST", "reference": {"text": "x"}})),
        ("not_asked", json.dumps({"id": "any-options", "image": cxr_png, "task": "classification", "language": "en",
                                  "modality": "DX", "body_part": "CHEST", "options": ["cat", "dog"],
                                  "reference": {"label": "cat"}})),
        ("not_asked", json.dumps({"id": "ct-report-en", "image": ct, "task": "report", "language": "en",
                                  "reference": {"text": "x"}})),
        ("not_asked", json.dumps({"id": "det-zh", "image": ct, "task": "detection", "language": "zh",
                                  "structures": ["肝脏"], "reference": {"boxes": {"肝脏": [[0, 0, 10, 10]]}}})),
        ("excluded", json.dumps({"id": "localizer", "image": ct_loc, "task": "report", "language": "zh",
                                 "reference": {"text": "x"}})),
        ("invalid", json.dumps({"id": "png-no-modality", "image": cxr_png, "task": "report", "language": "en",
                                "reference": {"text": "x"}})),
        ("invalid", json.dumps({"id": "label-not-option", "image": cxr_png, "task": "classification", "language": "en",
                                "modality": "DX", "options": ["a", "b"], "reference": {"label": "c"}})),
    ]
    (folder / "cases.jsonl").write_text("\n".join(lines + [p for _, p in problems]) + "\n", encoding="utf-8")
    (folder / "answers.jsonl").write_text("\n".join(json.dumps(a, ensure_ascii=False) for a in answers) + "\n",
                                          encoding="utf-8")
    first_problem_line = len(lines) + 1
    return {
        "scored": len(cases),
        "problems": [(first_problem_line + i, kind) for i, (kind, _) in enumerate(problems)],
    }


def expected_metrics() -> dict[tuple[str, str, str, str], dict[str, float]]:
    """Each group's metrics, worked out by hand (see tests/evaluation/test_metrics.py for the
    formulas). Keys: (task, language, modality, subset)."""
    e = math.e
    # METEOR of "heart normal" vs "heart is normal": P 1, R 2/3, two chunks over two matches
    meteor_heart = (2 / 3) / (0.9 + 0.1 * 2 / 3) * 0.5
    meteor_same2 = 1 - 0.5 * (1 / 2) ** 3  # two identical words, one chunk
    meteor_zh = (0.125 / (0.9 * 0.5 + 0.1 * 0.25)) * 0.5  # [肝脏, 未见异常] vs [肝脏, 未见, 明显, 异常]
    meteor_zh_same = 1 - 0.5 * (1 / 4) ** 3  # four identical words, one chunk
    return {
        ("detection", "en", "CT", ""): {
            # one-box cases: IoU 1/3 (liver), 1 (spleen), 499/999 (picture 200 x 100)
            "iou": (1 / 3 + 1 + 499 / 999) / 3,
            "acc@0.25": 1.0,
            "acc@0.5": 1 / 3,
            "acc@0.75": 1 / 3,
            # the kidneys: 1 match (IoU 0.5) of 2 reference and 3 predicted boxes
            "box_precision": 0.5,
            "box_recall": 1 / 3,
            "box_f1": 0.4,
            "box_iou": (0.5 + 1 / 3) / 2,
        },
        ("region_to_text", "en", "CT", ""): {
            # MedRegA: 2PR / (P + R + 1e-8): P = R = 1, then P = 1, R = 1/2
            "f1": (2 / (2 + 1e-8) + 1 / (1.5 + 1e-8)) / 2,
            "recall": 0.75,
            "accuracy": 0.5,
            "bleu1": (1 + e ** -1) / 2,
        },
        ("report", "en", "DX", ""): {
            # corpus BLEU-1: 4 of 4 unigrams, 4 words against 5 -> exp(1 - 5/4); no 3-gram at all
            "bleu1": e ** -0.25,
            "bleu4": 0.0,
            "rouge1": (0.8 + 1.0) / 2,
            "rougeL": (0.8 + 1.0) / 2,
            "meteor": (meteor_heart + meteor_same2) / 2,
        },
        ("report", "zh", "CT", ""): {
            "bleu1": (0.5 * e ** -1 + 1.0) / 2,
            "bleu4": (0.0 + 1.0) / 2,
            "rouge1": (1 / 3 + 1) / 2,
            "rougeL": (1 / 3 + 1) / 2,
            "meteor": (meteor_zh + meteor_zh_same) / 2,
        },
        ("grounded_report", "en", "DX", ""): {
            "bleu1": 1.0, "bleu4": 1.0, "rouge1": 1.0, "rougeL": 1.0,
            "meteor": 1 - 0.5 * (1 / 5) ** 3,  # five identical words, one chunk
            "iou": 1.0, "acc@0.25": 1.0, "acc@0.5": 1.0, "acc@0.75": 1.0,
        },
        ("classification", "en", "DX", "chexpert_train_cls"): {
            "macro_f1": 4 / 9,  # Cardiomegaly 2/3, Pleural Effusion 2/3, No Finding 0
            "accuracy": 0.5,
        },
    }
