"""Readers of the token-classification, question-answering and multiple-choice fine-tuning data: every
format read from a small file, every malformed row skipped and counted (reason naming file:line or the
question id) or raised as a DataError, and empty files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convbert.train.data import DataError
from convbert.train.task_data import (MultipleChoiceData, QAExample, QuestionAnsweringData, TokenClassificationData,
                                      read_multiple_choice, read_question_answering, read_token_classification)


def _lines(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def _assert_bad(reader, path: Path, where: str, why: str, *, unit: str = "row", usable: int = 2, **kwargs):
    """With bad_rows="skip" the one bad row is skipped with the reason ``where: why``; with "error" the
    DataError carries it."""
    data = reader(path, bad_rows="skip", **kwargs)
    assert data.skipped == 1
    assert data.skip_reasons == [f"{where}: {why}"]
    with pytest.raises(DataError) as info:
        reader(path, bad_rows="error", **kwargs)
    assert str(info.value) == f"malformed {unit} {where}: {why} (pass --bad-rows skip to skip such {unit}s)"
    return data


# --------------------------------------------------------------------------- token classification

_CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC


"""


def test_token_classification_jsonl(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(_lines({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}, "",
                           {"tokens": ["Peter"], "tags": [" B-PER "], "id": 7}))
    data = read_token_classification(path, bad_rows="error")
    assert isinstance(data, TokenClassificationData)
    assert data.tokens == [["EU", "rejects"], ["Peter"]] and data.tags == [["B-ORG", "O"], ["B-PER"]]
    assert data.skipped == 0 and data.skip_reasons == [] and data.path == str(path)


def test_token_classification_other_columns_integer_tags_and_a_json_array(tmp_path):
    path = tmp_path / "ner.json"
    path.write_text(json.dumps([{"words": ["a", "b"], "ner_tags": [3, 0]}, {"words": ["c"], "ner_tags": ["1"]}]))
    data = read_token_classification(path, "words", "ner_tags")
    assert data.tokens == [["a", "b"], ["c"]] and data.tags == [["3", "0"], ["1"]]
    other = tmp_path / "ner.data"
    other.write_text(_lines({"tokens": ["a"], "tags": ["O"]}))
    for fmt in ("jsonl", "json"):
        assert read_token_classification(other, data_format=fmt).tokens == [["a"]]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_token_classification_conll(tmp_path, newline):
    path = tmp_path / "train.conll"
    path.write_bytes(_CONLL.replace("\n", newline).encode())
    data = read_token_classification(path, bad_rows="error")
    assert data.tokens == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert data.tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert data.skipped == 0


def test_token_classification_conll_tabs_spaces_and_no_final_newline(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("EU\tB-ORG\nrejects  \t O \n   \t\nPeter\tNNP\tB-PER")  # a blank line of spaces and a tab
    data = read_token_classification(path, bad_rows="error")
    assert data.tokens == [["EU", "rejects"], ["Peter"]] and data.tags == [["B-ORG", "O"], ["B-PER"]]
    for suffix in (".txt", ".iob", ".bio"):  # all CoNLL by their extension
        other = path.with_suffix(suffix)
        other.write_text("EU B-ORG\n")
        assert read_token_classification(other).tags == [["B-ORG"]]
    other = tmp_path / "ner.data"
    other.write_text("EU B-ORG\n")
    assert read_token_classification(other, data_format="conll").tokens == [["EU"]]


@pytest.mark.parametrize("row, why", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
    ({"tokens": "a b", "tags": ["O", "O"]}, "'tokens' is not a list"),
    ({"tokens": ["a"], "tags": "O"}, "'tags' is not a list"),
    ({"tags": ["O"]}, "no 'tokens'"),
    ({"tokens": [], "tags": []}, "empty 'tokens' list"),
    ({"tokens": ["a", 3], "tags": ["O", "O"]}, "token 1 is not a string: 3"),
    ({"tokens": ["a", " "], "tags": ["O", "O"]}, "token 1 is empty"),
    ({"tokens": ["a"], "tags": [None]}, "tag 0 is not a tag (a non-empty string or an integer): None"),
    ('{"tokens": ["a"], "tags": ["O"]', "invalid JSON (Expecting ',' delimiter)"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_token_classification_bad_rows(tmp_path, row, why):
    path = tmp_path / "ner.jsonl"
    path.write_text(_lines({"tokens": ["a"], "tags": ["O"]}, row, {"tokens": ["b"], "tags": ["B-X"]}))
    data = _assert_bad(read_token_classification, path, f"{path}:2", why)
    assert data.tokens == [["a"], ["b"]] and data.tags == [["O"], ["B-X"]]


def test_token_classification_conll_one_column_skips_the_sentence(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects\nthe O\n\nPeter B-PER\n")
    data = _assert_bad(read_token_classification, path, f"{path}:2",
                       "one column only ('rejects'); a token line needs the token first and its tag in the last column",
                       unit="sentence")
    assert data.tokens == [["Peter"]] and data.tags == [["B-PER"]]


def test_token_classification_empty_files(tmp_path):
    empty = tmp_path / "empty.conll"
    empty.write_text("")
    with pytest.raises(DataError, match=r"data file '.*empty\.conll' is empty"):
        read_token_classification(empty)
    for name, text in [("blank.conll", "\n \n\t\n"), ("docstart.conll", "-DOCSTART- -X- O\n\n"),
                       ("blank.jsonl", "\n\n")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError, match=rf"{name} holds no sentences$"):
            read_token_classification(path)
    path = tmp_path / "allbad.jsonl"
    path.write_text(_lines({"tokens": ["a", "b"], "tags": ["O"]}))
    with pytest.raises(DataError, match=r"allbad\.jsonl has no usable sentences \(1 malformed sentences skipped, "
                                        r"e\.g\. .*allbad\.jsonl:1: 2 tokens but 1 tags\)"):
        read_token_classification(path)


def test_token_classification_format_and_column_errors(tmp_path):
    path = tmp_path / "ner.xml"
    path.write_text("x")
    with pytest.raises(DataError, match=r"cannot tell the format of .*ner\.xml.*--data-format jsonl\|conll"):
        read_token_classification(path)
    path = tmp_path / "ner.jsonl"
    path.write_text(_lines({"words": ["a"], "labels": ["O"]}))
    with pytest.raises(DataError, match=r"no row has the key\(s\) \['tokens', 'tags'\]; "
                                        r"keys seen: \['labels', 'words'\]"):
        read_token_classification(path)
    with pytest.raises(ValueError, match="bad_rows"):
        read_token_classification(path, bad_rows="ignore")


# --------------------------------------------------------------------------- question answering

_CONTEXT_1 = "Super Bowl 50 was played in Santa Clara, California."
_CONTEXT_2 = "The Normans were the people who gave their name to Normandy."


def _squad_v1() -> dict:
    return {"version": "1.1", "data": [
        {"title": "Super_Bowl_50", "paragraphs": [
            {"context": _CONTEXT_1, "qas": [
                {"id": "sb1", "question": "Where was Super Bowl 50 played?",
                 "answers": [{"text": "Santa Clara, California", "answer_start": 28},
                             {"text": "Santa Clara", "answer_start": 28},
                             {"text": "Santa Clara", "answer_start": 28}]},
                {"id": "sb2", "question": "Which Super Bowl?", "answers": [{"text": "50", "answer_start": 11}]}]}]},
        {"title": "Normans", "paragraphs": [
            {"context": _CONTEXT_2, "qas": [
                {"id": "no1", "question": "What is named after the Normans?",
                 "answers": [{"text": "Normandy", "answer_start": 51}]}]}]}]}


def test_squad_v1(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(_squad_v1()))
    data = read_question_answering(path, bad_rows="error")
    assert isinstance(data, QuestionAnsweringData) and not data.version_2 and data.skipped == 0
    assert data.examples == [
        QAExample("sb1", "Where was Super Bowl 50 played?", _CONTEXT_1,
                  ["Santa Clara, California", "Santa Clara", "Santa Clara"], [28, 28, 28]),
        QAExample("sb2", "Which Super Bowl?", _CONTEXT_1, ["50"], [11]),
        QAExample("no1", "What is named after the Normans?", _CONTEXT_2, ["Normandy"], [51]),
    ]
    other = tmp_path / "squad.data"  # any name, with the format given
    other.write_text(json.dumps(_squad_v1()))
    assert len(read_question_answering(other, data_format="squad").examples) == 3
    assert len(read_question_answering(other, data_format="json").examples) == 3  # by its content


def test_squad_v2(tmp_path):
    doc = {"version": "v2.0", "data": [
        {"title": "Normans", "paragraphs": [
            {"context": _CONTEXT_2, "qas": [
                {"id": "n1", "question": "Who gave their name to Normandy?", "is_impossible": False,
                 "answers": [{"text": "The Normans", "answer_start": 0}]},
                {"id": "n2", "question": "Who gave their name to France?", "is_impossible": True,
                 "answers": [], "plausible_answers": [{"text": "Normans", "answer_start": 4}]}]}]},
        {"title": "Super_Bowl_50", "paragraphs": [
            {"context": _CONTEXT_1, "qas": [
                {"id": "s1", "question": "Where was Super Bowl 49 played?", "is_impossible": True, "answers": [],
                 "plausible_answers": [{"text": "Santa Clara", "answer_start": 28}]}]}]}]}
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(doc, indent=2))
    data = read_question_answering(path, bad_rows="error")
    assert data.version_2
    assert [(e.id, e.answer_texts, e.answer_starts) for e in data.examples] == [
        ("n1", ["The Normans"], [0]), ("n2", [], []), ("s1", [], [])]


def _qa_row(qid="q1", question="Where is the cat?", context="The cat sat on the mat.", texts=("mat",),
            starts=(19,)) -> dict:
    return {"id": qid, "title": "Cats", "question": question, "context": context,
            "answers": {"text": list(texts), "answer_start": list(starts)}}


def test_question_answering_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(_lines(_qa_row(), _qa_row("q2", "Who?", texts=(), starts=()), _qa_row(3, texts=("cat", "The cat"),
                                                                                         starts=(4, 0))))
    data = read_question_answering(path, bad_rows="error")
    assert data.version_2
    assert data.examples == [QAExample("q1", "Where is the cat?", "The cat sat on the mat.", ["mat"], [19]),
                             QAExample("q2", "Who?", "The cat sat on the mat.", [], []),
                             QAExample("3", "Where is the cat?", "The cat sat on the mat.", ["cat", "The cat"],
                                       [4, 0])]
    # JSON lines in a .json file (what datasets' to_json writes) and a JSON array read too.
    lines = tmp_path / "train.json"
    lines.write_text(_lines(_qa_row(), _qa_row("q2")))
    assert [e.id for e in read_question_answering(lines).examples] == ["q1", "q2"]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([_qa_row(), _qa_row("q2")]))
    data = read_question_answering(array)
    assert [e.id for e in data.examples] == ["q1", "q2"] and not data.version_2


@pytest.mark.parametrize("row, why", [
    (_qa_row(starts=(0,)), "answer 'mat' does not match the context at answer_start 0: the context there reads 'The'"),
    (_qa_row(starts=(21,)), "answer_start 21 of answer 'mat' is outside the context (23 characters)"),
    (_qa_row(starts=(-1,)), "answer_start -1 of answer 'mat' is outside the context (23 characters)"),
    (_qa_row(starts=("19",)), "answer_start '19' of answer 'mat' is not an integer"),
    (_qa_row(starts=(19, 4)), "1 answer texts but 2 answer_start values"),
    (_qa_row(texts=("",), starts=(0,)), "an answer has no text: ''"),
    (_qa_row(question=""), "missing or empty question"),
    ({k: v for k, v in _qa_row().items() if k != "question"}, "missing or empty question"),
    (_qa_row(context="  "), "missing or empty context"),
    ({k: v for k, v in _qa_row().items() if k != "id"}, "missing or empty id"),
    (_qa_row("q1"), "duplicate id 'q1' (first at {path}:1)"),
    ({**_qa_row(), "answers": [{"text": "mat", "answer_start": 19}]},
     "'answers' is not an object {\"text\": [...], \"answer_start\": [...]}"),
])
def test_question_answering_bad_rows(tmp_path, row, why):
    # The bad rows have the first row's id too: only a usable question counts as a duplicate.
    path = tmp_path / "qa.jsonl"
    path.write_text(_lines(_qa_row("q1"), row, _qa_row("q3")))
    data = _assert_bad(read_question_answering, path, f"{path}:2", why.replace("{path}", str(path)), unit="question")
    assert len(data.examples) == 2


def test_squad_bad_questions_are_named_by_their_id(tmp_path):
    doc = _squad_v1()
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 12
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    data = _assert_bad(read_question_answering, path, f"{path}: question 'sb2'",
                       "answer '50' does not match the context at answer_start 12: the context there reads '0 '",
                       unit="question")
    assert [e.id for e in data.examples] == ["sb1", "no1"]
    # A duplicate id names where both are.
    doc = _squad_v1()
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "sb1"
    path.write_text(json.dumps(doc))
    _assert_bad(read_question_answering, path, f"{path}: question 'sb1' at data[1].paragraphs[0].qas[0]",
                "duplicate id 'sb1' (first at data[0].paragraphs[0].qas[0])", unit="question")
    # A missing context makes each of the paragraph's questions bad; without an id, its place names it.
    doc = _squad_v1()
    del doc["data"][1]["paragraphs"][0]["context"]
    del doc["data"][1]["paragraphs"][0]["qas"][0]["id"]
    path.write_text(json.dumps(doc))
    _assert_bad(read_question_answering, path, f"{path}: data[1].paragraphs[0].qas[0]", "missing or empty id",
                unit="question")
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "no1"
    path.write_text(json.dumps(doc))
    _assert_bad(read_question_answering, path, f"{path}: question 'no1'", "missing or empty context", unit="question")


def test_squad_structure_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "x"}]}))
    with pytest.raises(DataError, match=r"broken\.json: data\[0\] is not an article with a 'paragraphs' list"):
        read_question_answering(path)
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "x", "paragraphs": [{"context": "c"}]}]}))
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\] is not a paragraph with a 'qas' list"):
        read_question_answering(path)
    path.write_text(json.dumps([_qa_row()]))
    with pytest.raises(DataError, match=r"broken\.json is not SQuAD JSON"):
        read_question_answering(path, data_format="squad")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON"):
        read_question_answering(path, data_format="squad")
    other = tmp_path / "qa.txt"
    other.write_text("x")
    with pytest.raises(DataError, match=r"--data-format squad\|jsonl\|json$"):
        read_question_answering(other)
    with pytest.raises(DataError, match=r"data format 'conll' is not one of squad, jsonl, json for this task"):
        read_question_answering(other, data_format="conll")


def test_question_answering_empty_files(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("")
    with pytest.raises(DataError, match=r"data file '.*empty\.json' is empty"):
        read_question_answering(path)
    path.write_text(json.dumps({"version": "v2.0", "data": []}))
    with pytest.raises(DataError, match=r"empty\.json holds no questions$"):
        read_question_answering(path)
    path = tmp_path / "blank.jsonl"
    path.write_text("\n \n")
    with pytest.raises(DataError, match=r"blank\.jsonl holds no questions$"):
        read_question_answering(path)
    path.write_text(_lines(_qa_row(starts=(0,))))
    with pytest.raises(DataError, match=r"blank\.jsonl has no usable questions \(1 malformed questions skipped"):
        read_question_answering(path)


# --------------------------------------------------------------------------- multiple choice

_SWAG_HEADER = "video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label"


def test_multiple_choice_jsonl(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(_lines({"question": "2 + 2?", "choices": ["3", "4", "5"], "label": 1},
                           {"question": "Sky?", "choices": ["blue", "green", "red"], "label": None},
                           {"question": "Grass?", "choices": ["blue", "green", "red"]}))
    data = read_multiple_choice(path, bad_rows="error")
    assert isinstance(data, MultipleChoiceData) and data.num_choices == 3 and data.skipped == 0
    assert data.contexts == ["2 + 2?", "Sky?", "Grass?"]
    assert data.choices == [["3", "4", "5"], ["blue", "green", "red"], ["blue", "green", "red"]]
    assert data.labels == [1, None, None]


def test_multiple_choice_swag_jsonl(tmp_path):
    path = tmp_path / "swag.json"
    path.write_text(_lines({"sent1": "Members of the group sit.", "sent2": "The people", "ending0": "dance.",
                            "ending1": "eat.", "label": 0},
                           {"sent1": "She opens a door.", "sent2": "", "ending0": "She leaves.",
                            "ending1": "She waits.", "label": 1}))
    data = read_multiple_choice(path, bad_rows="error")
    assert read_multiple_choice(path, data_format="json").choices == data.choices
    assert data.contexts == ["Members of the group sit.", "She opens a door."]
    assert data.choices == [["The people dance.", "The people eat."], ["She leaves.", "She waits."]]
    assert data.labels == [0, 1] and data.num_choices == 2


def test_multiple_choice_swag_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(_SWAG_HEADER + "\r\n"
                    'anetv_1,0,"Students lift. They","Students lift.",They,gold,"run, fast.",sit.,jump.,fly.,2\r\n'
                    "\r\n"
                    "lsmdc_2,1,He is. He,He is.,He,gen,sings.,cries.,laughs.,waits.,0\r\n", encoding="utf-8-sig")
    data = read_multiple_choice(path, bad_rows="error")
    assert data.contexts == ["Students lift.", "He is."]
    assert data.choices == [["They run, fast.", "They sit.", "They jump.", "They fly."],
                            ["He sings.", "He cries.", "He laughs.", "He waits."]]
    assert data.labels == [2, 0] and data.num_choices == 4
    # SWAG's test file has no labels.
    test = tmp_path / "test.csv"
    test.write_text(_SWAG_HEADER.rsplit(",", 1)[0] + "\nv,0,x,A.,B,gold,c.,d.,e.,f.\n")
    assert read_multiple_choice(test).labels == [None]


@pytest.mark.parametrize("row, why", [
    ({"question": "q", "choices": ["only"], "label": 0}, "1 choice(s); a question needs at least two"),
    ({"question": "q", "choices": ["a", "b", "c"], "label": 3}, "label 3 is outside [0, 3) for 3 choices"),
    ({"question": "q", "choices": ["a", "b", "c"], "label": -1}, "label -1 is outside [0, 3) for 3 choices"),
    ({"question": "q", "choices": ["a", "b", "c"], "label": "1"}, "label '1' is not an integer"),
    ({"question": "q", "choices": ["a", "b", "c"], "label": True}, "label True is not an integer"),
    ({"question": "q", "choices": ["a", 2, "c"], "label": 0}, "choice 1 is not a string: 2"),
    ({"question": "q", "choices": ["a", "", "c"], "label": 0}, "choice 1 is empty"),
    ({"question": "q", "choices": "a b c", "label": 0}, "'choices' is not a list"),
    ({"choices": ["a", "b", "c"], "label": 0}, "missing or empty 'question'"),
    ({"question": " ", "choices": ["a", "b", "c"], "label": 0}, "missing or empty 'question'"),
    ({"question": "q", "choices": ["a", "b"], "label": 0},
     "2 choices, but the first row ({path}:1) has 3: all rows of a file must have the same number of choices"),
    ({"sent1": "s", "sent2": "t", "ending0": "a", "ending1": 5, "ending2": "c"},
     "choice 1 ('ending1') is not a string: 5"),
    ({"sent1": "s", "ending0": "a", "ending1": "b", "ending2": "c"}, "missing 'sent2'"),
    ({"sent2": "t", "ending0": "a", "ending1": "b", "ending2": "c"}, "missing or empty 'sent1'"),
])
def test_multiple_choice_bad_rows(tmp_path, row, why):
    path = tmp_path / "mc.jsonl"
    path.write_text(_lines({"question": "first", "choices": ["a", "b", "c"], "label": 2}, row,
                           {"sent1": "s", "sent2": "t", "ending0": "a", "ending1": "b", "ending2": "c", "label": 0}))
    data = _assert_bad(read_multiple_choice, path, f"{path}:2", why.replace("{path}", str(path)))
    assert data.contexts == ["first", "s"] and data.labels == [2, 0]
    assert data.choices == [["a", "b", "c"], ["t a", "t b", "t c"]]


def test_multiple_choice_csv_bad_rows_and_header(tmp_path):
    path = tmp_path / "swag.csv"
    good = "v,0,x,A.,B,gold,c.,d.,e.,f.,1"
    path.write_text("\n".join([_SWAG_HEADER, good, "v,0,x,A.,B,gold,c.,d.,e.,f.,x", good]) + "\n")
    _assert_bad(read_multiple_choice, path, f"{path}:3", "label 'x' is not an integer")
    path.write_text("\n".join([_SWAG_HEADER, good, "v,0,x,A.,B,gold,c.,d.,e.,f.,1,extra", good]) + "\n")
    _assert_bad(read_multiple_choice, path, f"{path}:3", "12 fields, the header has 11")
    path.write_text("\n".join([_SWAG_HEADER, good, "v,0,x,A.,B,gold,c.,d.,e.,f.,7", good]) + "\n")
    _assert_bad(read_multiple_choice, path, f"{path}:3", "label 7 is outside [0, 4) for 4 choices")
    path.write_text("question,choice0,choice1,label\nq,a,b,0\n")
    with pytest.raises(DataError, match=r"swag\.csv: no column\(s\) \['sent1', 'sent2', 'ending0', 'ending1'\].*"
                                        r"SWAG's columns"):
        read_multiple_choice(path)


def test_multiple_choice_empty_files(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"data file '.*empty\.jsonl' is empty"):
        read_multiple_choice(path)
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl holds no rows$"):
        read_multiple_choice(path)
    header_only = tmp_path / "header.csv"
    header_only.write_text(_SWAG_HEADER + "\n")
    with pytest.raises(DataError, match=r"header\.csv holds no rows$"):
        read_multiple_choice(header_only)
    path.write_text(_lines({"question": "q", "choices": ["a"]}))
    with pytest.raises(DataError, match=r"empty\.jsonl has no usable rows \(1 malformed rows skipped"):
        read_multiple_choice(path)
    other = tmp_path / "mc.xml"
    other.write_text("x")
    with pytest.raises(DataError, match=r"--data-format jsonl\|csv\|tsv"):
        read_multiple_choice(other)
