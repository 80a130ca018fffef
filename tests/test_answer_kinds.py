"""Answer kinds (short, yes_no, multiple_choice): extraction and accuracy on hand-written model outputs, kinds
declared by generic JSON and registered loaders, the PubMedQA loader on the original file, its corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from regrad_lib import retrieval
from regrad_lib.answering import harness
from regrad_lib.core import generation, task_batches
from regrad_lib.data import (
    corpus,
    datasets,
    indexed_corpus,
    metrics,
    prompts,
    pubmedqa,
    qa_records,
)
from regrad_lib.data.qa_records import DatasetFormatError
from regrad_lib.evaluation import results
from regrad_lib.io import paths
from regrad_lib.reporting import effects
from regrad_lib.retrieval import augment

SAMPLE = paths.sample_dir() / "pubmedqa"
FULL = Path(__file__).resolve().parents[2] / "shared" / "data" / "domains" / "pubmedqa"   # the development machine's
OPTIONS = ("holding that the statute applies", "holding that the statute does not apply", "holding a",
           "holding an", "holding that the claim is time-barred")


# --- extraction and scoring on hand-written outputs ---------------------------------------------------------------

@pytest.mark.parametrize("said, labels, expected", [
    ("Yes", metrics.YES_NO, "yes"), ("no.", metrics.YES_NO, "no"), ("YES, it does.", metrics.YES_NO, "yes"),
    ("Maybe", metrics.YES_NO_MAYBE, "maybe"), ("Maybe", metrics.YES_NO, ""),     # maybe only where allowed
    ("It is unclear; no", metrics.YES_NO, "no"),          # no leading label: the first label word
    ("The study shows that", metrics.YES_NO_MAYBE, ""), ("", metrics.YES_NO, ""),
    ("Nope", metrics.YES_NO, ""), ("yes/no", metrics.YES_NO, ""),    # "yesno" after punctuation removal
])
def test_yes_no_maps_the_first_word(said, labels, expected):
    assert metrics.extract("yes_no", said, labels) == expected


@pytest.mark.parametrize("said, expected", [
    ("B", "B"), ("(c)", "C"), ("D. holding an", "D"), ("E)", "E"), ("The answer is B", "B"), ("Option (d)", "D"),
    ("holding that the statute does not apply", "B"),     # an option's text: its letter (the longest match)
    ("holding that the statute applies here", "A"), ("holding an", "D"), ("I think C", "C"),
    ("F", ""), ("holding that", ""), ("", ""),
])
def test_multiple_choice_takes_the_letter(said, expected):
    assert metrics.extract("multiple_choice", said, OPTIONS) == expected


def test_label_kinds_score_accuracy_and_short_answers_keep_em_f1():
    assert metrics.score_kind("Yes, clearly", ["yes"], "yes_no", metrics.YES_NO_MAYBE) == \
        {"em": 1.0, "acc": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert metrics.score_kind("no", ["maybe"], "yes_no", metrics.YES_NO_MAYBE)["f1"] == 0.0
    assert metrics.score_kind("(B)", ["b"], "multiple_choice", OPTIONS)["em"] == 1.0
    assert metrics.score_kind("the Nile river", ["Nile"]) == metrics.score("the Nile river", ["Nile"])
    rows = [{"prediction": p, "answers": [g], "answer_kind": "yes_no", "choices": list(metrics.YES_NO_MAYBE),
             "answer_nll": 1.0} for p, g in (("yes", "yes"), ("no", "yes"), ("maybe", "maybe"), ("", "no"))]
    assert results.score_rows(rows)["em"] == results.score_rows(rows)["f1"] == 50.0
    assert effects.is_right(rows[0]) and not effects.is_right(rows[1])
    with pytest.raises(ValueError, match="not one of the yes_no labels"):
        metrics.score_kind("yes", ["perhaps"], "yes_no")
    with pytest.raises(ValueError, match="answer kind 'boolean'"):
        metrics.extract("boolean", "yes")


def test_majority_baseline_is_chosen_on_training_labels():
    base = metrics.majority_baseline(["no", "yes", "no"], ["yes", "yes", "no", "maybe"])
    assert base == {"label": "no", "accuracy": 25.0, "n": 4, "test_counts": {"yes": 2, "no": 1, "maybe": 1}}


def test_the_harness_answers_with_the_label_and_keeps_the_raw_text():
    task = task_batches.Task(0, "Q?", ("maybe",), kind="yes_no", choices=metrics.YES_NO_MAYBE)
    row = harness._row(task, generation.Generation((1, 2), " Maybe so.\n", "Maybe so."), ["p1"], 0)
    assert (row["prediction"], row["generated"], row["answer_kind"]) == ("maybe", " Maybe so.\n", "yes_no")
    maybe = generation.Generation((1,), "Maybe so.", "Maybe so.")
    short = harness._row(task_batches.Task(0, "Q?", ("x",)), maybe, [], 0)
    assert short["prediction"] == "Maybe so." and "answer_kind" not in short


# --- declaring a kind ------------------------------------------------------------------------------------------------

def test_generic_records_declare_their_kind(tmp_path):
    rows = [{"question": "Is it?", "answer": "Yes", "answer_kind": "yes_no"},
            {"question": "Is it not?", "answer": "maybe", "answer_kind": "yes_no", "choices": ["yes", "no", "maybe"]},
            {"question": "Pick one.", "choices": list(OPTIONS), "answer": OPTIONS[1]},
            {"question": "Pick another.", "choices": ["x", "y"], "answer": "a"},
            {"question": "Who?", "answer": "Ada"}]
    (tmp_path / "dev.json").write_text(json.dumps(rows))
    recs = datasets.load("mykinds", tmp_path, "dev")
    assert [(r.kind, r.answers) for r in recs] == [("yes_no", ["yes"]), ("yes_no", ["maybe"]),
                                                   ("multiple_choice", ["B"]), ("multiple_choice", ["A"]),
                                                   ("short", ["Ada"])]
    assert recs[0].choices == metrics.YES_NO and recs[2].choices == OPTIONS


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "answer": "maybe", "answer_kind": "yes_no"}, r"record 0: field 'answer' is 'maybe', not one "
                                                                   r"of the yes_no labels \['yes', 'no'\]"),
    ({"question": "q", "answer": "yes", "answer_kind": "bool"}, "field 'answer_kind' is 'bool'"),
    ({"question": "q", "answer": "yes", "answer_kind": "yes_no", "choices": ["yes", "nah"]}, "field 'choices'"),
    ({"question": "q", "answer": "F", "choices": ["a", "b"]}, r"field 'answer' is 'F': give an option letter \(A, B\)"),
    ({"question": "q", "answer": "A", "choices": ["a"]}, "2 to 10 options, got 1"),
    ({"question": "q", "answer": "A", "answer_kind": "short", "choices": ["a", "b"]}, "the answer kind is 'short'"),
])
def test_bad_kind_declarations_name_the_record_and_field(tmp_path, record, message):
    (tmp_path / "dev.json").write_text(json.dumps([record]))
    with pytest.raises(DatasetFormatError, match=message):
        datasets.load("mykinds", tmp_path, "dev")


def test_a_registered_loader_declares_the_kind_of_its_records(tmp_path):
    datasets.register("myyesno", lambda folder, split: [{"question": "Is it?", "answer": "No"},
                                                        qa_records.QARecord(1, "Is that?", ["YES"], "1")],
                      kind="yes_no")
    recs = datasets.load("myyesno", tmp_path, "dev")
    assert [(r.kind, r.answers, r.choices) for r in recs] == [("yes_no", ["no"], metrics.YES_NO)] * 1 + \
        [("yes_no", ["yes"], metrics.YES_NO)]
    with pytest.raises(ValueError, match="kind='bool'"):
        datasets.register("mybad", lambda folder, split: [], kind="bool")


def test_augmented_records_carry_the_kind_to_the_tasks(tmp_path):
    index = retrieval.build(_tsv(tmp_path), "kinds-idx")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "dev.json").write_text(json.dumps([
        {"question": "Is the sky blue?", "answer": "yes", "answer_kind": "yes_no"},
        {"question": "Which colour is the sky?", "choices": ["blue", "green"], "answer": "blue"},
        {"question": "What colour is grass?", "answer": "green"}]))
    file = augment.augment("kindsqa", "dev", retriever=index, data_dir=tmp_path / "q", topk=1)
    records = json.loads(file.read_text())
    assert [r.get("answer_kind") for r in records] == ["yes_no", "multiple_choice", None]   # short: as before
    loaded = task_batches.load("kindsqa", "dev", 1)
    assert [(t.kind, t.choices) for t in loaded] == [("yes_no", ("yes", "no")), ("multiple_choice", ("blue", "green")),
                                                     ("short", ())]


def _tsv(tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("id\ttext\ttitle\n1\tThe sky is blue on a clear day.\tSky\n2\tGrass is green.\tGrass\n")
    return path


# --- PubMedQA ---------------------------------------------------------------------------------------------------

def test_pubmedqa_loader_on_the_bundled_original_file():
    dev, train = (datasets.load("pubmedqa", SAMPLE, split) for split in ("dev", "train"))
    truth = json.loads((SAMPLE / "test_ground_truth.json").read_text())
    original = json.loads((SAMPLE / "ori_pqal.json").read_text())
    assert len(dev) == len(truth) == 20 and len(train) == len(original) - 20 == 20
    assert {r.source_id for r in dev} == set(truth) and not {r.source_id for r in train} & set(truth)
    assert [r.source_id for r in dev + train] == [p for p in original if p in truth] + \
        [p for p in original if p not in truth]                    # ori_pqal.json's order (not by label)
    first = dev[0]
    assert first.question == original[first.source_id]["QUESTION"]
    assert first.answers == [truth[first.source_id]] and first.kind == "yes_no"
    assert first.choices == ("yes", "no", "maybe") and datasets.load("pubmedqa", SAMPLE, "test") == dev
    assert {a for r in dev for a in r.answers} == {"yes", "no", "maybe"}


@pytest.mark.skipif(not (FULL / pubmedqa.ORIGINAL).is_file(), reason="the full PubMedQA PQA-L is not on this machine")
def test_pubmedqa_loader_on_the_full_original_file():
    dev, train = (datasets.load("pubmedqa", FULL, split) for split in ("dev", "train"))
    assert len(dev) == len(train) == 500
    count = lambda recs: {k: sum(r.answers == [k] for r in recs) for k in ("yes", "no", "maybe")}  # noqa: E731
    assert count(dev) == {"yes": 276, "no": 169, "maybe": 55}
    assert sum(1 for _ in pubmedqa.passages(FULL)) == 3358
    assert metrics.majority_baseline([r.answers[0] for r in train], [r.answers[0] for r in dev])["label"] == "yes"


def test_pubmedqa_errors_name_the_file_and_pmid(tmp_path):
    original = json.loads((SAMPLE / "ori_pqal.json").read_text())
    truth = json.loads((SAMPLE / "test_ground_truth.json").read_text())
    pmid = next(iter(truth))
    (tmp_path / "ori_pqal.json").write_text(json.dumps(original))
    flipped = "no" if truth[pmid] != "no" else "yes"
    (tmp_path / "test_ground_truth.json").write_text(json.dumps({**truth, pmid: flipped}))
    with pytest.raises(DatasetFormatError, match=f"PMID {pmid} is .* but ori_pqal.json says final_decision"):
        datasets.load("pubmedqa", tmp_path, "dev")
    original[pmid]["LABELS"] = original[pmid]["LABELS"][:-1]
    (tmp_path / "ori_pqal.json").write_text(json.dumps(original))
    with pytest.raises(DatasetFormatError, match=f"PMID {pmid}: field 'LABELS'"):
        datasets.load("pubmedqa", tmp_path, "dev")
    with pytest.raises(ValueError, match="pubmedqa split 'validation'"):
        datasets.load("pubmedqa", SAMPLE, "validation")
    with pytest.raises(FileNotFoundError, match="ori_pqal.json"):
        datasets.load("pubmedqa", tmp_path / "none", "dev")


def test_pubmedqa_paragraphs_are_a_corpus_of_their_own():
    path = indexed_corpus.prepare(SAMPLE)
    assert path.parent == paths.work_root() / "data" / "corpora" and path.suffix == ".tsv"
    read = list(corpus.read(path))
    original = json.loads((SAMPLE / "ori_pqal.json").read_text())
    assert len(read) == sum(len(r["CONTEXTS"]) for r in original.values()) == corpus.count(path)
    pmid = next(iter(original))
    assert read[0] == corpus.Passage(f"{pmid}-0", original[pmid]["LABELS"][0],
                                     " ".join(original[pmid]["CONTEXTS"][0].split()))
    assert indexed_corpus.prepare(SAMPLE) == path
    assert indexed_corpus.prepare(SAMPLE, with_probe=True).name.endswith("+probe.tsv")
    with pytest.raises(FileNotFoundError, match="without ori_pqal.json"):
        indexed_corpus.prepare(paths.sample_dir())
    index = retrieval.build(path, "pubmedqa-sample")
    question = datasets.load("pubmedqa", SAMPLE, "dev")[0]
    [hits] = index.search([question.question], 3)
    assert hits[0].passage_id.startswith(question.source_id + "-")      # BM25 finds the question's own abstract
    share = pubmedqa.own_passage_share([{"test_id": 0, "passage_ids": [h.passage_id for h in hits]}], SAMPLE)
    assert 0 < share <= 1 and not math.isnan(share)


# --- prompts ---------------------------------------------------------------------------------------------------------

def _chat(kind, choices=(), style="instruct", passages=None):
    from regrad_lib.config import LearnerConfig

    return prompts.messages("Is water wet?" if kind != "multiple_choice" else "Which bird?", passages,
                            LearnerConfig(prompt_style=style), kind, choices)


def test_instruct_style_asks_with_the_public_codes_wording():
    blind, seen = _chat("yes_no")[0]["content"], _chat("yes_no", passages=[("T", "x")])[0]["content"]
    assert blind == ("You are a helpful AI assistant who is ready to answer user's question. \n"
                     "Answer only 'yes' or 'no'!")
    assert seen.endswith("\nYour answer should be concise, which means it must be 'yes' or 'no' only!")
    maybe = _chat("yes_no", metrics.YES_NO_MAYBE)[0]["content"]
    assert maybe.endswith("Answer only 'yes', 'no' or 'maybe'!")
    choice = _chat("multiple_choice", OPTIONS)
    assert choice[0]["content"].endswith("Answer only with the option letter: A, B, C, D or E.")
    assert _chat("multiple_choice", OPTIONS, passages=[("T", "x")])[0]["content"].endswith(
        "the final answer is X, where X ∈ {A, B, C, D, E}.")
    assert choice[-1]["content"] == "Question: Which bird?\nChoices:\n" + "\n".join(
        f"{letter}. {option}" for letter, option in zip("ABCDE", OPTIONS))
    assert _chat("short")[0]["content"] == prompts.SYSTEM_PROMPT and len(_chat("short")) == 2


def test_the_example_frame_shows_worked_questions_of_the_same_kind():
    chat = _chat("yes_no", metrics.YES_NO_MAYBE, style="example")
    assert chat[0]["content"] == "Answer the question with 'yes', 'no' or 'maybe': one word, no explanation."
    assert [m["content"] for m in chat if m["role"] == "assistant"] == ["Answer: no", "Answer: yes"]
    chat = _chat("multiple_choice", OPTIONS, style="example")
    assert [m["content"] for m in chat if m["role"] == "assistant"] == ["Answer: B", "Answer: D"]
    assert "Choices:\nA. a dam\nB. a reef" in chat[1]["content"] and chat[-1]["content"].endswith("E. " + OPTIONS[4])
    short = _chat("short", style="example")
    assert [m["content"] for m in short if m["role"] == "assistant"] == [f"Answer: {e.answer}"
                                                                         for e in prompts.EXAMPLES]


def test_the_label_kinds_worked_examples_are_in_no_bundled_data():
    names = [title for examples in prompts.KIND_EXAMPLES.values() for (title, _), _, _ in examples]
    for path in sorted(paths.sample_dir().rglob("*")):
        if path.is_file() and path.suffix in (".json", ".tsv", ".jsonl"):
            text = path.read_text(encoding="utf-8")
            assert not [n for n in names if n in text], path


def test_training_and_evaluation_prompts_carry_the_kind(tiny):
    _, tok = tiny
    task = task_batches.Task(0, "Is the sky blue?", ("yes",), (("Sky", "The sky is blue."),), ("1",), kind="yes_no",
                      choices=metrics.YES_NO)
    from regrad_lib.config import LearnerConfig

    cfg = LearnerConfig(blind_context=False)
    [example] = task_batches.qa_examples(tok, [task], cfg)
    text = tok.decode(example.input_ids)
    assert "Answer only 'yes' or 'no'" not in text and "it must be 'yes' or 'no' only!" in text
    assert text.endswith("Answer: yes<|im_end|>")
    label = [t for t, lab in zip(example.input_ids, example.labels) if lab != prompts.IGNORE]
    assert label == prompts.answer_ids(tok, "yes")
    assert prompts.prompt_ids(tok, task.question, task.passages, cfg, kind="yes_no") == \
        example.input_ids[:len(example.input_ids) - len(label)]
