"""Human-readable wording of our documents, per language.

Everything a radiologist sees before opening a document (series description, document
title) says that it is an AI-generated, unverified result, and for test backends (tiny,
replay) that it comes from a test model and not from MedRegA.
"""

from __future__ import annotations

from .content import AlgorithmInfo, Note
from .vr import LO, fit

__all__ = [
    "short_algorithm_name",
    "document_title_meaning",
    "series_description",
    "gsps_series_description",
    "no_findings_text",
    "gsps_content_label",
    "note_text",
]

_TITLE = {
    ("en", False): "Imaging Measurement Report - AI-generated, unverified",
    ("en", True): "Imaging Measurement Report - test model output, unverified",
    ("zh", False): "影像测量报告（AI生成，未经审核）",
    ("zh", True): "影像测量报告（测试模型输出，未经审核）",
}

_NO_FINDINGS = {
    "en": "The algorithm reported no findings for this study.",
    "zh": "算法未对本检查报告任何发现。",
}


def short_algorithm_name(algorithm: AlgorithmInfo) -> str:
    """``"MedRegA"`` for the real model; the test backend's name without its remark otherwise.

    ``"tiny-random-internvl (test model, not MedRegA)"`` -> ``"tiny-random-internvl"``.
    """
    if not algorithm.is_test_model:
        return "MedRegA"
    return algorithm.name.split(" (", 1)[0].strip() or algorithm.backend


def document_title_meaning(language: str, algorithm: AlgorithmInfo) -> str:
    """Code Meaning of the document title (DCM 126000, localized; PS3.3 8.3).

    The code stays (126000, DCM, "Imaging Measurement Report") so that viewers that look
    for TID 1500 recognise the document; the meaning adds what the reader must know first.
    """
    return _TITLE[(language, algorithm.is_test_model)]


def _what(algorithm: AlgorithmInfo) -> str:
    name = short_algorithm_name(algorithm)
    return f"{name} test results" if algorithm.is_test_model else f"{name} AI results"


def series_description(language: str, algorithm: AlgorithmInfo, study_version: int) -> str:
    """``"MedRegA AI results (en), unverified"`` (``" v2"`` etc. after the language from version 2)."""
    version = f" v{study_version}" if study_version > 1 else ""
    return fit(f"{_what(algorithm)} ({language}){version}, unverified", LO)


def gsps_series_description(languages: tuple[str, ...], algorithm: AlgorithmInfo, study_version: int) -> str:
    """Series Description of the presentation states, e.g. ``"MedRegA AI boxes (en+zh), unverified"``."""
    version = f" v{study_version}" if study_version > 1 else ""
    what = _what(algorithm).replace(" results", " boxes")
    return fit(f"{what} ({'+'.join(languages)}){version}, unverified", LO)


def gsps_content_label(algorithm: AlgorithmInfo) -> str:
    """Content Label (CS: capitals, digits, underscore, space; 16 characters)."""
    return "AI_UNVERIFIED" if not algorithm.is_test_model else "TEST_UNVERIFIED"


def no_findings_text(language: str) -> str:
    """The sentence written when the algorithm produced neither text nor regions."""
    return _NO_FINDINGS[language]


_NOTES = {
    ("en", "truncated"): "The answer to {task} stopped at the model's length limit before it was finished: "
                         "it may be incomplete (this document is PARTIAL).",
    ("zh", "truncated"): "模型对{task}的回答在达到生成长度上限时尚未结束，内容可能不完整（本报告标记为不完整）。",
    ("en", "prior_study"): "Left out of the findings of {task}: the sentence refers to a prior study, "
                           "which the model was not given: \u201c{text}\u201d",
    ("zh", "prior_study"): "未列入{task}的结果：该句提及既往检查，而模型并未获得既往检查：\u201c{text}\u201d",
    ("en", "deid_blank"): "Left out of the findings of {task}: the sentence holds a de-identification blank "
                          "(___) learnt from the training reports: \u201c{text}\u201d",
    ("zh", "deid_blank"): "未列入{task}的结果：该句含有训练报告中的去标识化空白（___）：\u201c{text}\u201d",
    ("en", "unmapped"): "The answer to {task} names none of the trained options: \u201c{text}\u201d",
    ("zh", "unmapped"): "模型对{task}的回答不属于训练时的任何选项：\u201c{text}\u201d",
}


def note_text(language: str, note: Note) -> str:
    """The sentence of a Comment about the results that is not a finding (see :class:`Note`)."""
    return _NOTES[(language, note.kind)].format(task=note.task, text=note.text)
