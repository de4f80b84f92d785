"""Answer parser: reference answers, malformed output, and properties (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from model.parse import Box, parse_answer


def test_reference_grounded_report_line_9(reference_lines) -> None:
    answer = reference_lines[9]["conversations"][1]["value"]
    parsed = parse_answer(answer)
    assert not parsed.unparsed
    assert [r.label for r in parsed.regions] == ["right lung", "left lung"]
    assert parsed.regions[0].boxes == [Box(102, 106, 481, 910)]
    assert parsed.regions[1].boxes == [Box(535, 128, 923, 889)]
    for region in parsed.regions:
        assert region.description is not None
        assert region.description.startswith("No focal consolidation, pleural effusion")
        assert region.description.endswith("No radiographic evidence for acute cardiopulmonary process")
    assert parsed.text.startswith("right lung, left lung: No focal")
    assert "<" not in parsed.text and "[[" not in parsed.text


def test_reference_chinese_line_10(reference_lines) -> None:
    parsed = parse_answer(reference_lines[10]["conversations"][1]["value"])
    (region,) = parsed.regions
    assert region.label == "胰腺癌"
    assert region.boxes == [Box(661, 528, 743, 599)]
    assert region.description is not None and region.description.startswith("胰尾部见一稍低密度肿块")
    assert parsed.text.startswith("胰腺癌：胰尾部")


def test_reference_detection_line_8_has_two_boxes(reference_lines) -> None:
    parsed = parse_answer(reference_lines[8]["conversations"][1]["value"])
    (region,) = parsed.regions
    assert region.boxes == [Box(365, 293, 416, 598), Box(596, 316, 635, 464)]
    assert region.description is None


def test_plain_answers_have_no_regions(reference_lines) -> None:
    for line in (0, 4, 5, 6, 7):
        answer = reference_lines[line]["conversations"][1]["value"]
        parsed = parse_answer(answer)
        assert parsed.regions == [] and not parsed.unparsed
        assert parsed.text == answer.strip()


def test_tag_stripped_form_as_chat_returns_it(reference_lines) -> None:
    tagged = parse_answer(reference_lines[9]["conversations"][1]["value"])
    stripped = reference_lines[9]["conversations"][1]["value"]
    for tag in ("<ref>", "</ref>", "<box>", "</box>"):
        stripped = stripped.replace(tag, "")
    parsed = parse_answer(stripped)
    assert parsed.regions == tagged.regions
    assert parsed.text == tagged.text


def test_full_width_brackets_commas_and_chinese_punctuation() -> None:
    parsed = parse_answer("<ref>肝脏</ref><box>［［10，20，30，40］，［50，60，70，80］］</box>；未见异常。")
    (region,) = parsed.regions
    assert region.boxes == [Box(10, 20, 30, 40), Box(50, 60, 70, 80)]
    assert region.description == "未见异常。"


def test_clamp_swap_and_duplicates() -> None:
    parsed = parse_answer("<ref>a</ref><box>[[1200, -5, 30, 40], [30, 40, 999, 0], [5, 5, 6, 6]]</box>")
    (region,) = parsed.regions
    assert region.boxes == [Box(30, 0, 999, 40), Box(5, 5, 6, 6)]


def test_missing_closing_tags() -> None:
    parsed = parse_answer("<ref>nodule<box>[[1, 2, 3, 4]] in the right upper lobe")
    (region,) = parsed.regions
    assert region.label == "nodule" and region.boxes == [Box(1, 2, 3, 4)]
    assert region.description == "in the right upper lobe"
    assert not parsed.unparsed


def test_several_labels_with_own_descriptions() -> None:
    parsed = parse_answer(
        "<ref>heart</ref><box>[[300, 400, 700, 800]]</box>: enlarged. "
        "<ref>left lung</ref><box>[[500, 100, 900, 900]]</box>: clear."
    )
    assert [(r.label, r.description) for r in parsed.regions] == [("heart", "enlarged."), ("left lung", "clear.")]


def test_unreadable_markup_is_kept_and_flagged() -> None:
    parsed = parse_answer("<ref>a</ref><box>[[1, 2, 3]]</box> rest")
    assert parsed.unparsed
    assert parsed.regions == []
    assert "[[1, 2, 3]]" in parsed.text


_label = st.text(alphabet=st.characters(blacklist_characters="<>[]［］,，、;；:：.。!?！？\n\r", blacklist_categories=["Cs"]), min_size=1, max_size=12).map(str.strip).filter(bool)
_coord = st.integers(min_value=-200, max_value=1300)
_box = st.tuples(_coord, _coord, _coord, _coord)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_any_text(text: str) -> None:
    parsed = parse_answer(text)
    for region in parsed.regions:
        for box in region.boxes:
            assert 0 <= box.x1 <= box.x2 <= 999 and 0 <= box.y1 <= box.y2 <= 999


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_label, st.lists(_box, min_size=1, max_size=4), st.sampled_from(["", ": ok.", "：可见。"])), min_size=1, max_size=4, unique_by=lambda t: t[0]),
    st.sampled_from([",", "，"]),
    st.booleans(),
)
def test_generated_regions_round_trip(items, comma: str, tagged: bool) -> None:
    parts = []
    for label, boxes, tail in items:
        inner = ", ".join(f"[{a}{comma} {b}{comma} {c}{comma} {d}]" for a, b, c, d in boxes)
        parts.append((f"<ref>{label}</ref><box>[{inner}]</box>" if tagged else f"{label}[{inner}]") + tail)
    parsed = parse_answer(" ".join(parts))
    assert not parsed.unparsed
    expected = []
    for label, boxes, _ in items:
        want = []
        for values in boxes:
            b = Box.normalised(list(values))
            if b not in want:
                want.append(b)
        expected.append((label, want))
    assert [(r.label, r.boxes) for r in parsed.regions] == expected
    # a group's description is the text after its last region
    for region, (_, _, tail) in zip(parsed.regions, items):
        if tail:
            assert region.description == tail.lstrip(":：").strip()
