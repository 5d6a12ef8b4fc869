"""Metrics of the token-classification, question-answering and multiple-choice fine-tuning tasks:
entity chunks as seqeval's default (conlleval) mode finds them, SQuAD exact match and F1 as the
official v1.1 / v2.0 scripts compute them. Every expected number is worked out by hand in a comment."""

from __future__ import annotations

import math

import pytest

from convbert.train.metrics import (entity_spans, exact_match_score, f1_score, multiple_choice_metrics,
                                    normalize_answer, squad_metrics, token_classification_metrics)


def _approx(value: float):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------- entity_spans


@pytest.mark.parametrize("tags, spans", [
    ([], []),
    (["O", "O"], []),
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["O", "I-X", "I-X", "O"], [("X", 1, 3)]),              # I- after O starts a chunk
    (["I-X"], [("X", 0, 1)]),                               # ... as at the start
    (["B-X", "I-Y"], [("X", 0, 1), ("Y", 1, 2)]),           # a type change ends one and starts another
    (["B-X", "I-X", "I-Y", "I-Y"], [("X", 0, 2), ("Y", 2, 4)]),
    (["B-X", "B-X"], [("X", 0, 1), ("X", 1, 2)]),           # adjacent B-X B-X: two chunks
    (["B-X", "O", "I-X"], [("X", 0, 1), ("X", 2, 3)]),
    (["B", "I", "O", "I"], [("_", 0, 2), ("_", 3, 4)]),     # tags without a type
    (["S-X", "B-Y", "E-Y", "O", "B-X", "I-X", "E-X"], [("X", 0, 1), ("Y", 1, 3), ("X", 4, 7)]),  # IOBES
    (["E-X", "E-X"], [("X", 0, 1), ("X", 1, 2)]),           # E ends a chunk; an E after E starts one
    (["S-X", "I-X"], [("X", 0, 1), ("X", 1, 2)]),
    (["B-X", "I-X", "B-X"], [("X", 0, 2), ("X", 2, 3)]),
])
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


# --------------------------------------------------------------------------- token_classification_metrics


def test_perfect_prediction():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    assert token_classification_metrics(refs, refs) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "f1_LOC": 1.0, "f1_ORG": 1.0, "f1_PER": 1.0}


def test_seqeval_documented_example():
    # seqeval's docstring example: MISC (3, 6) predicted as (2, 6), PER right -> P = R = F = 1/2;
    # 8 of the 10 tokens right.
    refs = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    m = token_classification_metrics(preds, refs)
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.5, 0.5, 0.5, 0.8)
    assert (m["f1_MISC"], m["f1_PER"]) == (0.0, 1.0)


def test_wrong_boundary_is_a_miss_both_ways():
    # Reference PER (0, 2) and LOC (3, 4); predicted PER (0, 1) too short, LOC (3, 5) too long:
    # no chunk matches -> P = 0/2, R = 0/2, F = 0; tokens 0, 2, 3 right -> accuracy 3/5.
    refs = [["B-PER", "I-PER", "O", "B-LOC", "O"]]
    preds = [["B-PER", "O", "O", "B-LOC", "I-LOC"]]
    assert token_classification_metrics(preds, refs) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.6, "f1_LOC": 0.0, "f1_PER": 0.0}


def test_partial_credit_per_type():
    # PER right, LOC (2, 3) predicted for (2, 4): tp 1 of 2 predicted, 2 actual -> P = R = F = 1/2;
    # tokens: 3 of 4 right.
    refs = [["B-PER", "O", "B-LOC", "I-LOC"]]
    preds = [["B-PER", "O", "B-LOC", "O"]]
    assert token_classification_metrics(preds, refs) == {
        "precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.75, "f1_LOC": 0.0, "f1_PER": 1.0}


def test_wrong_type_is_a_miss():
    refs = [["B-PER", "I-PER", "O"]]
    preds = [["B-ORG", "I-ORG", "O"]]
    m = token_classification_metrics(preds, refs)
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1 / 3, "f1_ORG": 0.0, "f1_PER": 0.0}


def test_i_after_o_counts_as_a_chunk():
    # Predicted "I-X I-X" after nothing is the chunk X (0, 2), the reference's: all scores 1, but
    # only 2 of 3 tags are equal.
    m = token_classification_metrics([["I-X", "I-X", "O"]], [["B-X", "I-X", "O"]])
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    assert m["accuracy"] == _approx(2 / 3)


def test_adjacent_chunks_of_one_type():
    # Reference X (0, 1), X (1, 2), Y (3, 4); predicted X (0, 1), X (1, 2): tp 2, P = 2/2,
    # R = 2/3, F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8; tokens 3 of 4.
    m = token_classification_metrics([["B-X", "B-X", "O", "O"]], [["B-X", "B-X", "O", "B-Y"]])
    assert m["precision"] == 1.0 and m["recall"] == _approx(2 / 3) and m["f1"] == _approx(0.8)
    assert m["accuracy"] == 0.75 and m["f1_X"] == 1.0 and m["f1_Y"] == 0.0
    # One long chunk predicted for the two: X (0, 2) matches neither.
    m = token_classification_metrics([["B-X", "I-X"]], [["B-X", "B-X"]])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.5)


def test_chunks_do_not_cross_sentences():
    # "B-X" | "I-X" in two sentences is two chunks, as "B-X" | "B-X" is: everything matches, though
    # one tag of two differs.
    m = token_classification_metrics([["B-X"], ["I-X"]], [["B-X"], ["B-X"]])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (1.0, 1.0, 1.0, 0.5)


def test_all_o_and_empty_sentences():
    # No chunk anywhere: precision, recall and F1 are undefined -> 0.0 (seqeval, zero_division=0).
    assert token_classification_metrics([["O", "O"], ["O"]], [["O", "O"], ["O"]]) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}
    # A predicted chunk where there is none: P = 0/1, R undefined -> 0.
    assert token_classification_metrics([["B-X", "O"]], [["O", "O"]]) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5, "f1_X": 0.0}
    # Empty sentences add nothing.
    assert token_classification_metrics([[], ["B-X"], []], [[], ["B-X"], []]) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0, "f1_X": 1.0}
    m = token_classification_metrics([[]], [[]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0) and math.isnan(m["accuracy"])
    m = token_classification_metrics([], [])
    assert m["f1"] == 0.0 and math.isnan(m["accuracy"])


def test_lengths_must_match():
    with pytest.raises(ValueError, match=r"sentence 1: 2 predicted tags but 3 reference tags"):
        token_classification_metrics([["O"], ["O", "O"]], [["O"], ["O", "O", "O"]])
    with pytest.raises(ValueError, match=r"1 predicted sentences but 2 reference sentences"):
        token_classification_metrics([["O"]], [["O"], ["O"]])


# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize("text, normal", [
    ("The Cat!", "cat"),
    ("  A  tale of\ttwo   cities. ", "tale of two cities"),
    ("Theater, an apple and a banana", "theater apple and banana"),  # whole words only
    ("U.S.A.", "usa"),
    ("don't", "dont"),
    ("the-end", "theend"),  # punctuation goes first, so "the" is no word of its own here
    ("(an) [the] {a}", ""),
    ("", ""),
])
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match():
    assert exact_match_score("The Cat!", ["cat"]) == 1.0
    assert exact_match_score("cats", ["cat"]) == 0.0
    assert exact_match_score("cat", ["dog", "a cat."]) == 1.0  # any of the answers
    assert exact_match_score("cat", "the cat") == 1.0          # one answer as a string
    assert exact_match_score("", []) == 1.0                    # no answer, none predicted
    assert exact_match_score("cat", []) == 0.0


def test_f1_partial_overlap():
    # pred [big, red, dog], gold [red, dog, barked, loudly]: 2 shared, P = 2/3, R = 2/4,
    # F = 2 * 2/3 * 1/2 / (2/3 + 1/2) = 4/7.
    assert f1_score("the big red dog", ["red dog barked loudly"]) == _approx(4 / 7)
    # A token counts as often as both have it: pred [dog, dog, dog], gold [dog]: P = 1/3, R = 1, F = 1/2.
    assert f1_score("dog dog dog", ["dog"]) == _approx(0.5)
    assert f1_score("The Cat!", ["cat"]) == 1.0
    assert f1_score("mouse", ["cat"]) == 0.0


def test_f1_is_the_best_over_the_ground_truths():
    # [red, dog] against [blue, cat] -> 0; [red, dog, barked] -> P = 1, R = 2/3, F = 0.8;
    # [dog] -> P = 1/2, R = 1, F = 2/3. The best: 0.8.
    assert f1_score("red dog", ["blue cat", "red dog barked", "dog"]) == _approx(0.8)


def test_f1_without_an_answer():
    assert f1_score("", []) == 1.0
    assert f1_score("the", []) == 1.0       # normalises to nothing: no answer
    assert f1_score("cat", []) == 0.0
    assert f1_score("", ["cat"]) == 0.0
    assert f1_score("", ["the", "a"]) == 1.0  # answers that normalise to nothing count as none


def test_squad_metrics_v1():
    # q1: "the Denver Broncos" = "Denver Broncos" -> EM 1, F1 1.
    # q2: "Clara" against [santa, clara, california] -> P 1, R 1/3, F 1/2; against [santa, clara] ->
    #     P 1, R 1/2, F 2/3; EM 0, F1 2/3.
    # q3: no prediction -> 0 and 0. "extra" is no question and is ignored.
    refs = {"q1": ["Denver Broncos"], "q2": ["Santa Clara, California", "Santa Clara"], "q3": ["1966"]}
    preds = {"q1": "the Denver Broncos", "q2": "Clara", "extra": "zzz"}
    m = squad_metrics(preds, refs)
    assert list(m) == ["exact_match", "f1", "total"]
    assert m["exact_match"] == _approx(100 / 3)
    assert m["f1"] == _approx(100 * (1 + 2 / 3) / 3)
    assert m["total"] == 3


def test_squad_metrics_v2_splits():
    # a: "the cat" = "cat" -> 1, 1.     b: no answer, none given -> 1, 1.
    # c: "dog" against [big, dog] -> EM 0, P 1, R 1/2, F1 2/3.     d: "mouse" for no answer -> 0, 0.
    refs = {"a": ["cat"], "b": [], "c": ["big dog"], "d": []}
    preds = {"a": "the cat", "b": "", "c": "dog", "d": "mouse"}
    m = squad_metrics(preds, refs)
    assert list(m) == ["exact_match", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                       "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert m["exact_match"] == 50.0 and m["f1"] == _approx(100 * (1 + 1 + 2 / 3) / 4) and m["total"] == 4
    assert m["HasAns_exact"] == 50.0 and m["HasAns_f1"] == _approx(100 * (1 + 2 / 3) / 2) and m["HasAns_total"] == 2
    assert m["NoAns_exact"] == 50.0 and m["NoAns_f1"] == 50.0 and m["NoAns_total"] == 2


def test_squad_metrics_missing_predictions_score_zero():
    # Even for a question without an answer (the v1.1 rule, applied to v2.0 data too).
    m = squad_metrics({}, {"x": [], "y": []})
    assert m == {"exact_match": 0.0, "f1": 0.0, "total": 2, "NoAns_exact": 0.0, "NoAns_f1": 0.0, "NoAns_total": 2}
    assert squad_metrics({"x": ""}, {"x": []})["exact_match"] == 100.0
    assert squad_metrics({}, {}) == {"exact_match": 0.0, "f1": 0.0, "total": 0}


# --------------------------------------------------------------------------- multiple choice


def test_multiple_choice_accuracy():
    # argmax: 1, 0, 1 against labels 1, 0, 0 -> 2/3.
    m = multiple_choice_metrics([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5], [0.0, 0.5, 0.2]], [1, 0, 0])
    assert list(m) == ["accuracy"] and m["accuracy"] == _approx(2 / 3)
