"""The shipped finding table and the local codes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sr_writer import coding

TABLE = Path(coding.__file__).with_name(coding.TABLE_FILE)

# Verhoeff tables: every SNOMED CT identifier ends in a Verhoeff check digit.
_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def _verhoeff_ok(number: str) -> bool:
    check = 0
    for index, digit in enumerate(reversed(number)):
        check = _D[check][_P[index % 8][int(digit)]]
    return check == 0


def _rows() -> list[dict[str, str]]:
    lines = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def test_table_codes_are_well_formed_snomed_concept_ids() -> None:
    rows = _rows()
    assert len(rows) >= 50
    for row in rows:
        value = row["code_value"]
        assert row["scheme"] == "SCT", row
        assert value.isdigit() and 6 <= len(value) <= 18, row
        assert value[-3:-1] in ("00", "10"), f"{value}: partition is not a concept"
        assert _verhoeff_ok(value), f"{value}: check digit wrong (typo?)"
        assert row["meaning_en"] and row["meaning_zh"], row
        assert len(row["meaning_zh"].encode("utf-8")) <= 64 and len(row["meaning_en"]) <= 64


def test_codes_are_unique_in_the_table() -> None:
    values = [row["code_value"] for row in _rows()]
    assert len(values) == len(set(values))


def test_verhoeff_catches_a_typo() -> None:
    assert _verhoeff_ok("3341006") and not _verhoeff_ok("3341007") and not _verhoeff_ok("3314006")


@pytest.mark.parametrize(
    ("label", "value", "en", "zh"),
    [
        ("right lung", "3341006", "Right lung", "右肺"),
        ("Right Lung.", "3341006", "Right lung", "右肺"),
        ("右肺", "3341006", "Right lung", "右肺"),
        ("left lung", "44029006", "Left lung", "左肺"),
        ("heart", "80891009", "Heart", "心脏"),
        ("心影", "80891009", "Heart", "心脏"),
        ("pleural effusion", "60046008", "Pleural effusion", "胸腔积液"),
        ("胰腺癌", "363418001", "Malignant tumor of pancreas", "胰腺癌"),
        ("Pancreatic  carcinoma", "363418001", "Malignant tumor of pancreas", "胰腺癌"),
    ],
)
def test_known_labels(label: str, value: str, en: str, zh: str) -> None:
    assert coding.finding_code(label, None, "en") == coding.finding_code(label, None, "en")
    en_code = coding.finding_code(label, None, "en")
    zh_code = coding.finding_code(label, None, "zh")
    assert (en_code.value, en_code.scheme_designator, en_code.meaning) == (value, "SCT", en)
    assert (zh_code.value, zh_code.scheme_designator, zh_code.meaning) == (value, "SCT", zh)


def test_unknown_labels_get_a_stable_local_code() -> None:
    a = coding.finding_code("Odd  shadow", None, "en")
    b = coding.finding_code("odd shadow", None, "zh")
    assert a.scheme_designator == coding.LOCAL_SCHEME
    assert a.value == b.value and len(a.value) <= 16
    assert a.meaning == "Odd shadow"
    assert coding.finding_code("another shadow", None, "en").value != a.value


def test_coding_scheme_item_only_for_local_codes() -> None:
    local = coding.local_code("x")
    assert coding.coding_scheme_identification([coding.finding_code("heart", None, "en")]) == []
    (item,) = coding.coding_scheme_identification([local])
    assert item.CodingSchemeDesignator == coding.LOCAL_SCHEME
    assert item.CodingSchemeResponsibleOrganization == coding.LOCAL_SCHEME_ORGANIZATION
