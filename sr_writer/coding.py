"""Codes written into our documents, and the label -> code lookup for findings.

Coded concepts come from SNOMED CT (``SCT``), DICOM (``DCM``), UCUM and RFC 5646
(PS3.16 Section 8). A finding label the shipped table (``finding_codes.csv``) does not know
is coded in the local scheme :data:`LOCAL_SCHEME`, which every document declares in its
Coding Scheme Identification Sequence (PS3.3 C.12.1.1.2) so receivers can tell it is ours.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from .vr import LO, fit

__all__ = [
    "LOCAL_SCHEME",
    "LOCAL_SCHEME_NAME",
    "LOCAL_SCHEME_ORGANIZATION",
    "MappedCode",
    "lookup_finding_code",
    "coded_option",
    "resolve_finding_codes",
    "finding_site",
    "FINDING_SITE",
    "finding_code",
    "local_code",
    "language_code",
    "procedure_codes",
    "coding_scheme_identification",
    "PROCESSING_EQUIPMENT",
    "QUALITATIVE_EVALUATIONS",
    "FINDING",
    "FINDINGS",
    "COMMENT",
    "IMAGING_MEASUREMENT_REPORT",
    "DIAGNOSTIC_IMAGING_REPORT",
    "WIDTH",
    "HEIGHT",
    "AREA",
    "MILLIMETER",
    "SQUARE_MILLIMETER",
    "SOURCE_OF_MEASUREMENT",
    "SOURCE",
]

#: The shipped label -> code table (next to this module).
TABLE_FILE = "finding_codes.csv"

#: Coding Scheme Designator of our local finding codes ("99" prefix: private, PS3.16 8.2).
LOCAL_SCHEME = "99MEDREGA"
LOCAL_SCHEME_NAME = "medrega-gateway local finding labels"
LOCAL_SCHEME_ORGANIZATION = "medrega-gateway"

#: Purpose of Reference of the algorithm's Contributing Equipment item (CID 7005). DCM has
#: no "Processing Algorithm" concept; 109103 is "Modifying Equipment" (the algorithm does not
#: modify images), so the algorithm is "Processing Equipment", as IHE AIR describes it.
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
FINDING = CodedConcept("121071", "DCM", "Finding")
FINDINGS = CodedConcept("121070", "DCM", "Findings")
COMMENT = CodedConcept("121106", "DCM", "Comment")
FINDING_SITE = CodedConcept("363698007", "SCT", "Finding Site")
IMAGING_MEASUREMENT_REPORT = CodedConcept("126000", "DCM", "Imaging Measurement Report")
DIAGNOSTIC_IMAGING_REPORT = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
SOURCE_OF_MEASUREMENT = CodedConcept("121112", "DCM", "Source of Measurement")
#: Concept name of the IMAGE items of the Image Library (TID 1600), as highdicom writes them.
SOURCE = CodedConcept("260753009", "SCT", "Source")
WIDTH = CodedConcept("103355008", "SCT", "Width")
HEIGHT = CodedConcept("121207", "DCM", "Height")
AREA = CodedConcept("42798000", "SCT", "Area")
MILLIMETER = CodedConcept("mm", "UCUM", "millimeter")
SQUARE_MILLIMETER = CodedConcept("mm2", "UCUM", "square millimeter")

_LANGUAGES = {
    "en": CodedConcept("en", "RFC5646", "English"),
    "zh": CodedConcept("zh", "RFC5646", "Chinese"),
}

#: Procedure Reported when the source carries no Procedure Code Sequence (by Modality).
_PROCEDURE_BY_MODALITY = {
    "CT": CodedConcept("77477000", "SCT", "Computed tomography"),
    "MR": CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
    "CR": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "US": CodedConcept("16310003", "SCT", "Diagnostic ultrasonography"),
}
_IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")


@dataclass(frozen=True)
class MappedCode:
    """One row of the shipped finding table."""

    value: str
    scheme: str
    meaning_en: str
    meaning_zh: str
    #: Code value of the body structure (a row of the table) this label is located in, if one.
    site: str | None = None
    synonyms: tuple[str, ...] = ()

    def meanings(self) -> dict[str, str]:
        """Code Meaning per language."""
        return {"en": self.meaning_en, "zh": self.meaning_zh}

    def concept(self, language: str) -> CodedConcept:
        """The code, its meaning in ``language`` (PS3.3 8.3: Code Meaning may be localized)."""
        meaning = self.meaning_zh if language == "zh" else self.meaning_en
        return CodedConcept(self.value, self.scheme, meaning)


def _normalize(label: str) -> str:
    text = unicodedata.normalize("NFKC", label).casefold()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" \t.,;:!?。，；：！？、()（）[]【】\"'")


@functools.cache
def _rows() -> tuple[MappedCode, ...]:
    source = Path(__file__).with_name(TABLE_FILE)  # shipped as package data (pyproject.toml)
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return tuple(
        MappedCode(row["code_value"], row["scheme"], row["meaning_en"], row["meaning_zh"],
                   row["finding_site"] or None, tuple(filter(None, (row["synonyms"] or "").split("|"))))
        for row in csv.DictReader(lines)
    )


@functools.cache
def _by_code() -> dict[tuple[str, str], MappedCode]:
    return {(code.value, code.scheme): code for code in _rows()}


@functools.cache
def _table() -> dict[str, MappedCode]:
    table: dict[str, MappedCode] = {}
    for code in _rows():
        names = [code.meaning_en, code.meaning_zh, *code.synonyms]
        for name in filter(None, (_normalize(n) for n in names)):
            if name in table and table[name] != code:
                raise RuntimeError(f"finding_codes.csv maps {name!r} to two codes")
            table[name] = code
    return table


def lookup_finding_code(label: str) -> MappedCode | None:
    """The table row for a finding label (English or Chinese), or ``None``."""
    return _table().get(_normalize(label))


def local_code(label: str) -> CodedConcept:
    """A code in :data:`LOCAL_SCHEME` for a label the table does not know.

    The value is a digest of the normalized label (so the same label always gets the same
    code, SH allows 16 characters); the meaning is the label itself (LO, 64 characters).
    """
    digest = hashlib.sha256(_normalize(label).encode("utf-8")).hexdigest()[:12].upper()
    return CodedConcept(f"L{digest}", LOCAL_SCHEME, fit(label, LO))


def finding_code(label: str, given: tuple[str, str, str] | None, language: str) -> CodedConcept:
    """The Finding code of a region: the worker's, else the table's, else a local one."""
    if given is not None:
        value, scheme, meaning = given
        return CodedConcept(value, scheme, fit(meaning, LO))
    mapped = lookup_finding_code(label)
    if mapped is not None:
        return mapped.concept(language)
    return local_code(label)


def resolve_finding_codes(labels: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """One Finding code for one box named in several languages: ``{language: (value, scheme, meaning)}``.

    The same box (one Tracking UID, PS3.16 TID 1410) must carry the same code in every SR. The
    first label the table knows decides (English first); its Code Meaning is localized per
    language (PS3.3 8.3). If the table knows none, the local code of the English label (else of
    the first label) is used, with each language's own label as its meaning.
    """
    ordered = sorted(labels.items(), key=lambda item: (item[0] != "en", item[0]))
    for _, label in ordered:
        mapped = lookup_finding_code(label)
        if mapped is not None:
            meanings = mapped.meanings()
            return {language: (mapped.value, mapped.scheme, meanings.get(language, mapped.meaning_en))
                    for language in labels}
    if not ordered:
        return {}
    base = local_code(ordered[0][1])
    return {language: (base.value, base.scheme_designator, fit(label, LO)) for language, label in labels.items()}


def finding_site(code: CodedConcept, language: str) -> CodedConcept | None:
    """The Finding Site (SCT 363698007, TID 1419) of a Finding code from the table, if it has one.

    Anatomy labels ("right lung") are their own site; a disorder with one site ("malignant
    tumor of pancreas") gets that structure; local codes and site-less findings get none.
    """
    mapped = _by_code().get((code.value, code.scheme_designator))
    if mapped is None or mapped.site is None:
        return None
    site = _by_code().get((mapped.site, mapped.scheme))
    if site is None:
        raise RuntimeError(f"{TABLE_FILE}: finding_site {mapped.site} of {mapped.value} is not a row")
    return site.concept(language)


def language_code(language: str) -> CodedConcept:
    """The TID 1204 language concept (CID 5000) of ``"en"`` or ``"zh"``."""
    return _LANGUAGES[language]


def procedure_codes(source: Dataset) -> list[CodedConcept]:
    """Procedure Reported (TID 1500 row 4) for the study of ``source``.

    The source's own Procedure Code Sequence (0008,1032) describes the imaging procedure
    best; without it, the procedure is named from the Modality.
    """
    codes: list[CodedConcept] = []
    for item in source.get("ProcedureCodeSequence", []) or []:
        if item.get("CodeValue") and item.get("CodingSchemeDesignator") and item.get("CodeMeaning"):
            codes.append(
                CodedConcept(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))
            )
    if codes:
        return codes
    return [_PROCEDURE_BY_MODALITY.get(str(source.get("Modality", "")), _IMAGING_PROCEDURE)]


def coding_scheme_identification(concepts: Sequence[CodedConcept]) -> list[Dataset]:
    """Coding Scheme Identification Sequence items for the private schemes in ``concepts``."""
    items = []
    if any(c.scheme_designator == LOCAL_SCHEME for c in concepts):
        item = Dataset()
        item.CodingSchemeDesignator = LOCAL_SCHEME
        item.CodingSchemeName = LOCAL_SCHEME_NAME
        item.CodingSchemeResponsibleOrganization = LOCAL_SCHEME_ORGANIZATION
        items.append(item)
    return items


def coded_option(option: str, language: str) -> tuple[str, str, str]:
    """(Code Value, Coding Scheme Designator, Code Meaning) of an option in ``language``.

    SNOMED CT where the shipped finding table knows the option, otherwise the declared local
    scheme (the same code value in both languages; the meaning in the SR's language, the Chinese
    name from :func:`model.classification.option_name_zh`).
    """
    from model.classification import option_name_zh

    mapped = lookup_finding_code(option)
    if mapped is not None:
        concept = mapped.concept(language)
    else:
        concept = local_code(option)
        if language == "zh":
            meaning = option_name_zh(option) or option
            return concept.value, concept.scheme_designator, meaning
    return concept.value, concept.scheme_designator, concept.meaning
