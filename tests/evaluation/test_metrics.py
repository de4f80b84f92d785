"""MedRegA's metrics on small cases whose values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from evaluation.metrics import (
    aggregate,
    bootstrap_ci,
    clean_report_en,
    clean_report_zh,
    score_classification,
    score_detection,
    score_region_to_text,
    score_report,
    words_zh,
)

#: Image of 999 x 999 pixels: a 0-999 coordinate is its pixel coordinate (value / 999 x 999).
SIDE = 999


def test_detection_one_box_accuracy_at_thresholds_and_mean_iou() -> None:
    # [0,0,100,100] vs [50,0,150,100]: intersection 50x100 = 5000, union 20000 - 5000 -> 1/3
    a = score_detection([[50, 0, 150, 100]], [[0, 0, 100, 100]], SIDE, SIDE)
    assert a.values["iou"] == pytest.approx(1 / 3)
    assert (a.values["acc@0.25"], a.values["acc@0.5"], a.values["acc@0.75"]) == (1.0, 0.0, 0.0)
    # exactly 0.5 is not "> 0.5": [0,0,100,50] vs [0,0,100,100] -> 5000 / 10000
    b = score_detection([[0, 0, 100, 50]], [[0, 0, 100, 100]], SIDE, SIDE)
    assert b.values["iou"] == pytest.approx(0.5) and b.values["acc@0.5"] == 0.0
    # more predicted boxes than references: the best of them counts (the second, IoU 1)
    c = score_detection([[500, 500, 600, 600], [0, 0, 100, 100]], [[0, 0, 100, 100]], SIDE, SIDE)
    assert c.values["iou"] == pytest.approx(1.0) and c.values["acc@0.75"] == 1.0
    # no box in the answer: IoU 0
    d = score_detection([], [[0, 0, 100, 100]], SIDE, SIDE)
    assert d.values["iou"] == 0.0 and d.values["acc@0.25"] == 0.0
    agg = aggregate([a, b, c, d])
    assert agg["iou"] == pytest.approx((1 / 3 + 0.5 + 1 + 0) / 4)
    assert agg["acc@0.25"] == pytest.approx(3 / 4)
    assert agg["acc@0.5"] == pytest.approx(1 / 4)
    assert agg["acc@0.75"] == pytest.approx(1 / 4)


def test_detection_pixels_follow_the_image_size() -> None:
    # 200 columns x 100 rows: [0,0,499,499] -> 99.9 x 49.95 px, [0,0,499,999] -> 99.9 x 100 px
    s = score_detection([[0, 0, 499, 499]], [[0, 0, 499, 999]], 100, 200)
    assert s.values["iou"] == pytest.approx(499 / 999)


def test_detection_several_boxes_one_to_one_matching() -> None:
    ref = [[0, 0, 100, 100], [200, 200, 300, 300]]
    pred = [
        [0, 0, 100, 50],        # with ref 0: 5000 / 10000 = 0.5 -> a match (>= 0.5)
        [250, 200, 350, 300],   # with ref 1: 5000 / 15000 = 1/3 -> assigned, not a match
        [600, 600, 700, 700],   # overlaps nothing, left unassigned
    ]
    s = score_detection(pred, ref, SIDE, SIDE)
    # MedRegA's naming: precision = matches / reference boxes, recall = matches / predicted boxes
    assert s.values["box_precision"] == pytest.approx(1 / 2)
    assert s.values["box_recall"] == pytest.approx(1 / 3)
    assert s.values["box_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4
    # box_iou: every assigned pair's IoU over the reference boxes: (0.5 + 1/3) / 2
    assert aggregate([s])["box_iou"] == pytest.approx((0.5 + 1 / 3) / 2)
    # the assignment is one to one and maximises total IoU, not greedy: ref A is best served by
    # the second box (IoU 1) though the first box overlaps it too (IoU 0.5) and ref B only by the first
    greedy_trap = score_detection([[0, 0, 100, 100], [0, 0, 100, 50]], [[0, 0, 100, 50], [0, 0, 100, 100]], SIDE, SIDE)
    assert greedy_trap.values["box_precision"] == 1.0 and greedy_trap.values["box_recall"] == 1.0
    # pooled over cases: (0.5 + 1/3 + 1 + 1) / (2 + 2)
    assert aggregate([s, greedy_trap])["box_iou"] == pytest.approx((0.5 + 1 / 3 + 2) / 4)
    assert aggregate([s, greedy_trap])["box_f1"] == pytest.approx((0.4 + 1.0) / 2)


def test_clean_report_as_medrega() -> None:
    assert clean_report_en("In comparison with the study of ___, the heart is normal.\nNo  effusion.") == (
        "the heart is normal.no effusion"
    )
    assert clean_report_zh("1.肝脏未见异常。\n2.脾脏[[1,2,3,4]]大小正常-") == "肝脏未见异常，脾脏大小正常"


def test_report_english_bleu_is_pooled_over_the_corpus() -> None:
    one = score_report("Heart normal.", "Heart is normal.", "en")
    # 13a tokens: [heart, normal] vs [heart, is, normal]: unigram precision 2/2,
    # brevity penalty exp(1 - 3/2); no bigram of the answer is in the reference -> BLEU-4 0
    assert aggregate([one])["bleu1"] == pytest.approx(math.exp(-0.5))
    assert aggregate([one])["bleu4"] == 0.0
    # ROUGE-1 and ROUGE-L: P 2/2, R 2/3 -> F 0.8
    assert one.values["rouge1"] == pytest.approx(0.8) and one.values["rougeL"] == pytest.approx(0.8)
    # METEOR (alpha 0.9, beta 3, gamma 0.5): m = 2, P = 1, R = 2/3,
    # Fmean = P R / (0.9 P + 0.1 R) = (2/3) / (0.9 + 1/15); "heart normal" is two chunks in the
    # reference -> fragmentation 2/2, penalty 0.5
    fmean = (2 / 3) / (0.9 + 0.1 * 2 / 3)
    assert one.values["meteor"] == pytest.approx(fmean * 0.5)
    two = score_report("No effusion", "no effusion", "en")
    # corpus: unigram matches 4 of 4, lengths 4 vs 5 -> exp(1 - 5/4); the mean of the two
    # sentence scores would be (exp(-0.5) + 1) / 2 instead
    both = aggregate([one, two])
    assert both["bleu1"] == pytest.approx(math.exp(-0.25))
    assert both["rouge1"] == pytest.approx((0.8 + 1.0) / 2)


def test_meteor_uses_wordnet_synonyms() -> None:
    # "sick" and "ill" share a WordNet synset (as nltk's METEOR does, WordNet is looked up after
    # Porter stemming, which leaves both words as they are): both words match, one chunk
    s = score_report("sick patient", "ill patient", "en")
    fmean = 1.0  # P = R = 1
    penalty = 0.5 * (1 / 2) ** 3  # 1 chunk over 2 matches
    assert s.values["meteor"] == pytest.approx(fmean * (1 - penalty))


def test_report_chinese_is_scored_on_jieba_words_per_case() -> None:
    # jieba cuts the reference into four words and the answer into two
    assert words_zh("肝脏未见明显异常") == ["肝脏", "未见", "明显", "异常"]
    assert words_zh("肝脏未见异常") == ["肝脏", "未见异常"]
    s = score_report("肝脏未见异常", "肝脏未见明显异常", "zh")
    # BLEU-1: 1 of 2 words match, brevity penalty exp(1 - 4/2)
    assert s.values["bleu1"] == pytest.approx(0.5 * math.exp(-1))
    assert s.values["bleu4"] == 0.0
    # ROUGE-1/L on words: P 1/2, R 1/4 -> F 1/3 (on characters it would be far higher)
    assert s.values["rouge1"] == pytest.approx(1 / 3) and s.values["rougeL"] == pytest.approx(1 / 3)
    # METEOR: m = 1, P 1/2, R 1/4, one chunk per match -> penalty 0.5
    assert s.values["meteor"] == pytest.approx((0.125 / (0.9 * 0.5 + 0.1 * 0.25)) * 0.5)
    same = score_report("肝脏未见明显异常", "肝脏未见明显异常", "zh")
    # Chinese BLEU is the mean of per-case scores, not pooled
    assert aggregate([s, same])["bleu1"] == pytest.approx((0.5 * math.exp(-1) + 1.0) / 2)


def test_classification_macro_f1_and_accuracy() -> None:
    # options C(0), PE(1), NF(2); truth C, PE, C, NF; predicted C, PE, NF, PE
    scores = [score_classification(t, p, "en") for t, p in [(0, 0), (1, 1), (0, 2), (2, 1)]]
    agg = aggregate(scores)
    # C: P 1, R 1/2 -> 2/3; PE: P 1/2, R 1 -> 2/3; NF: 0 -> macro (2/3 + 2/3 + 0) / 3
    assert agg["macro_f1"] == pytest.approx(4 / 9)
    assert agg["accuracy"] == pytest.approx(0.5)


def test_region_to_text() -> None:
    a = score_region_to_text("Left kidney [[1, 2, 3, 4]]", "left kidney", "en")
    b = score_region_to_text("kidney", "Right kidney", "en")
    assert a.values["recall"] == 1.0 and a.values["accuracy"] == 1.0 and a.values["bleu1"] == pytest.approx(1.0)
    # b: P 1, R 1/2 -> F1 2/3; recall < 0.75 -> not accurate; BLEU-1 1 x exp(1 - 2/1)
    assert b.values["f1"] == pytest.approx(1 / (1.5 + 1e-8), abs=1e-12) and b.values["accuracy"] == 0.0
    assert b.values["bleu1"] == pytest.approx(math.exp(-1))
    agg = aggregate([a, b])
    assert agg["accuracy"] == 0.5 and agg["recall"] == pytest.approx(0.75)
    assert agg["bleu1"] == pytest.approx((1 + math.exp(-1)) / 2)
    zh = score_region_to_text("左肾", "右肾", "zh")  # jieba: [左, 肾] vs [右肾]: no common word
    assert zh.values["recall"] == 0.0


def test_bootstrap_interval_holds_the_value_and_narrows_with_cases() -> None:
    few = [score_classification(i % 2, 0, "en") for i in range(10)]
    many = [score_classification(i % 2, 0, "en") for i in range(200)]
    ci_few, ci_many = bootstrap_ci(few, resamples=300)["accuracy"], bootstrap_ci(many, resamples=300)["accuracy"]
    assert ci_few[0] <= 0.5 <= ci_few[1] and ci_many[0] <= 0.5 <= ci_many[1]
    assert ci_many[1] - ci_many[0] < ci_few[1] - ci_few[0]
    assert bootstrap_ci(few, resamples=50) == bootstrap_ci(few, resamples=50)  # seeded
