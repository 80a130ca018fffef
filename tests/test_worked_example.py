"""The worked example of ``prompt_style = "example"`` shares no question template, no passage template and no
answer value with the probe generator or the bundled datasets: a method must never be taught, by the frame, a value
it is later asked for, nor be shown the very template it is tested on. Checked against the probe's own
templates and value lists (so a future probe template or value that collides fails here) and against every question
and answer alias of the bundled datasets."""

import csv
import re

import pytest

from regrad_lib.data import datasets, metrics, probe, prompts
from regrad_lib.io import paths

SAMPLES = {"popqa": ("dev", "train"), "hotpotqa": ("dev", "train"), "2wikimultihopqa": ("dev",),
           "complexwebquestions": ("dev",), "probe": ("dev", "train")}
PLACEHOLDER = re.compile(r"\{[a-z]\}")
FUNCTION_WORDS = {"a", "an", "the", "is", "was", "in", "of", "at", "on", "to", "as", "by", "for", "and", "does",
                  "do", "did", "has", "what", "which", "who", "where", "when", "how"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _contains(text: str, phrase: str) -> bool:
    """``phrase``'s words appear consecutively in ``text`` (case and punctuation ignored)."""
    return f" {' '.join(_words(phrase))} " in f" {' '.join(_words(text))} "


def _fragments(template: str) -> list[str]:
    """The fixed text of a template between its placeholders: pieces of two words or more with a content word
    ("works as a", "drives a"; not "is a")."""
    return [part for part in PLACEHOLDER.split(template)
            if len(_words(part)) >= 2 and set(_words(part)) - FUNCTION_WORDS]


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: each placeholder any text, the rest literal, case ignored."""
    parts = PLACEHOLDER.split(template)
    return re.compile(".+".join(re.escape(p) for p in parts), re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _example_texts(example: prompts.WorkedExample) -> list[str]:
    return [example.title, example.text, example.question, example.answer]


@pytest.fixture(scope="module")
def bundled():
    """Every question and every normalised answer alias of the bundled datasets, all splits."""
    questions, answers = [], set()
    for name, splits in SAMPLES.items():
        for split in splits:
            for record in datasets.load(name, paths.sample_dir() / name, split):
                questions.append(record.question)
                answers.update(metrics.normalize_answer(a) for a in record.answers)
    assert len(questions) > 1500 and len(answers) > 1000        # the data was really read
    return questions, answers


def _popqa_templates() -> list[str]:
    """PopQA's question templates: each question with its subject replaced by a placeholder."""
    with (paths.sample_dir() / "popqa" / "popQA.tsv").open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        return sorted({r["question"].replace(r["subj"], "{n}") for r in rows if r["subj"] in r["question"]})


def test_there_is_one_worked_example_and_it_answers_from_its_passage():
    assert len(prompts.EXAMPLES) == 1           # docs/method.md: "one worked question"
    for example in prompts.EXAMPLES:
        assert example.answer in example.text and example.subject in example.question
        assert example.answer not in example.question
        assert len(_sentences(example.text)) >= 3    # several facts, one asked


@pytest.mark.parametrize("example", prompts.EXAMPLES, ids=lambda e: e.subject)
def test_no_probe_template_or_value_in_the_worked_example(example):
    texts = _example_texts(example)
    values = [v for r in probe.RELATIONS for v in r.values]
    assert len(values) == 6 * 12
    for value in values:                                     # "pilot", "Oslo", "green" …, anywhere in the example
        assert not any(_contains(t, value) for t in texts), (value, example)
    for relation in probe.RELATIONS:
        assert not _pattern(relation.question).fullmatch(example.question), relation.question
        for template in (relation.question, *relation.sentences):
            for fragment in _fragments(template):            # "What is the job of", "drives a", "is a native of"
                assert not any(_contains(t, fragment) for t in texts), (fragment, example)
        for sentence in _sentences(example.text):
            assert not any(_pattern(s).fullmatch(sentence) for s in relation.sentences), sentence


def test_the_checks_catch_a_colliding_example():
    """The helpers flag the old examples' collisions, so the checks above are not vacuous."""
    assert _contains("By profession, Tomas Reld is a pilot.", "pilot")
    assert any(_contains("Tomas Reld drives a green car.", f) for f in _fragments("{n} drives a {v} car."))
    assert _pattern(probe.BY_NAME["occupation"].question).fullmatch("What is the job of Tomas Reld?")
    assert _pattern("What is {n}'s occupation?").fullmatch("What is Tomas Reld's occupation?")


@pytest.mark.parametrize("example", prompts.EXAMPLES, ids=lambda e: e.subject)
def test_no_bundled_question_template_or_answer_in_the_worked_example(example, bundled):
    questions, answers = bundled
    assert metrics.normalize_answer(example.answer) not in answers
    own = _pattern(example.question.replace(example.subject, "{n}"))
    assert not [q for q in questions if own.fullmatch(q.strip())]
    templates = _popqa_templates()
    assert len(templates) >= 2
    for template in templates:
        assert not _pattern(template).fullmatch(example.question), template
        assert not any(_contains(t, f) for t in _example_texts(example) for f in _fragments(template)), template


@pytest.mark.parametrize("example", prompts.EXAMPLES, ids=lambda e: e.subject)
def test_the_worked_example_is_invented(example):
    """Its subject and answer are in no corpus passage: nothing a method reads elsewhere repeats it."""
    text = " ".join(_words(" ".join(f"{p.title} {p.text}" for p in _corpus())))
    for name in (example.subject, example.answer):
        assert f" {' '.join(_words(name))} " not in f" {text} ", name


def _corpus():
    from regrad_lib.data import corpus

    return list(corpus.read(paths.sample_corpus())) + list(corpus.read(probe.passages_file()))
