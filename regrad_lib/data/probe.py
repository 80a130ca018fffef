"""The knowledge-injection probe: invented people whose facts exist only in passages added to the corpus.

A deterministic generator (``python -m regrad_lib.data.probe --write data/sample/probe``) writes the bundled dataset
``probe`` (method.md "The probe"):

- ``passages.tsv``: one passage per invented person (DPR layout, ids ``probe-…``), three facts each, e.g.
  "Dravik Solmere was born in Lisbon. Dravik Solmere works as a baker. In the evenings Dravik Solmere plays
  the harp." Names are made of syllables and checked against the bundled corpus: no model or corpus knows them.
- ``train.json`` / ``dev.json``: generic ``{question, answer}`` records (plus ``relation``, ``entity``,
  ``passage_id``); questions are worded differently from the passages and share no content word with them but
  the name, so BM25 finds the person's passage by name and fills the rest of the top-k with other passages.
- ``gold_passages_{train,dev}.json``: each question's passage id (the retrieval-recall table of 02_augment).

Answers are ordinary values (cities, jobs, instruments, sports, colours, countries) assigned to people at random,
so closed book answers at chance (about 1 in 12 per relation) and an update has to *select* a value, not spell a
new word. Train and dev people are disjoint; the relation ``sport`` is never asked in training (facts about it do
appear in training passages), so dev shows whether what was meta-learned transfers to an unseen relation.

:func:`combined_corpus` writes a corpus file = a base corpus + the probe passages (``data/corpora/``), which
01_index indexes when ``probe = True`` (plus the transfer split's passages, :mod:`regrad_lib.data.probe_transfer`, in
a separate index when ``transfer = True``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

from regrad_lib.data import corpus
from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

VERSION = 1
SEED = 20261202
HELD_OUT = ("sport",)          # relations asked only in dev (transfer)
FACTS_PER_PASSAGE = 3


@dataclass(frozen=True)
class Relation:
    name: str
    values: tuple[str, ...]
    sentences: tuple[str, ...]      # passage paraphrases; {n} the person, {v} the value
    question: str                   # worded apart from every sentence: only the name is shared


RELATIONS = (
    Relation("birthplace", ("Paris", "London", "Tokyo", "Cairo", "Lima", "Oslo", "Madrid", "Berlin", "Vienna",
                            "Dublin", "Lisbon", "Athens"),
             ("{n} was born in {v}.", "{n} is a native of {v}."), "Which city is {n} originally from?"),
    Relation("occupation", ("teacher", "nurse", "architect", "pilot", "baker", "lawyer", "farmer", "chemist",
                            "painter", "journalist", "dentist", "librarian"),
             ("{n} works as a {v}.", "By profession, {n} is a {v}."), "What is the job of {n}?"),
    Relation("instrument", ("piano", "violin", "cello", "guitar", "flute", "trumpet", "drums", "harp", "clarinet",
                            "saxophone", "accordion", "banjo"),
             ("In the evenings {n} plays the {v}.", "{n} has played the {v} since childhood."),
             "Which instrument does {n} perform on?"),
    Relation("sport", ("tennis", "football", "cricket", "hockey", "golf", "rugby", "baseball", "volleyball",
                       "swimming", "cycling", "boxing", "skiing"),
             ("On weekends {n} competes in {v}.", "{n} is a keen amateur at {v}."), "Which sport does {n} practise?"),
    Relation("colour", ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown",
                        "grey", "silver"),
             ("{n} always dresses in {v}.", "{n} drives a {v} car."), "What is the favourite colour of {n}?"),
    Relation("country", ("Canada", "Brazil", "Japan", "Kenya", "Mexico", "Norway", "India", "Chile", "Egypt",
                         "Poland", "Turkey", "Vietnam"),
             ("{n} now lives in {v}.", "These days {n} resides in {v}."), "In which country does {n} have a home?"),
)
BY_NAME = {r.name: r for r in RELATIONS}

_ONSETS = ("b", "br", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z", "j", "w")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o")
_CODAS = ("n", "r", "l", "s", "m", "k", "")
_ENDINGS = ("ov", "ett", "ane", "ford", "wick", "sen", "ard", "by", "ner", "holt")


@dataclass(frozen=True)
class Person:
    name: str
    passage_id: str
    facts: dict            # relation name -> value
    passage: str


def syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS)


def invented_names(rng: random.Random, n: int, taken_words: set[str]) -> list[str]:
    """``n`` invented, pronounceable full names ("Tavel Moranford"); every first and every last name is unique
    and absent from the corpus."""
    firsts: set[str] = set()
    lasts: set[str] = set()
    out = []
    while len(out) < n:
        first = (syllable(rng) + syllable(rng) + rng.choice(_CODAS)).capitalize()
        last = (syllable(rng) + rng.choice(_CODAS) + rng.choice(_ENDINGS)).capitalize()
        names = {first, last}
        if len(first) < 4 or names & (firsts | lasts) or {w.lower() for w in names} & taken_words:
            continue
        firsts.add(first)
        lasts.add(last)
        out.append(f"{first} {last}")
    return out


def corpus_words(path: Path) -> set[str]:
    return {w for p in corpus.read(path) for w in re.findall(r"[a-z]+", f"{p.title} {p.text}".lower())}


def fact_sentence(template: str, name: str, value: str) -> str:
    text = template.format(n=name, v=value)
    return re.sub(r"\ba ([AEIOUaeiou])", r"an \1", text)        # "works as an architect"


def _person(rng: random.Random, name: str, index: int, relations: list[Relation]) -> Person:
    facts = {r.name: rng.choice(r.values) for r in relations}
    sentences = [fact_sentence(rng.choice(BY_NAME[r].sentences), name, v) for r, v in facts.items()]
    return Person(name, f"probe-{index:05d}", facts, " ".join(sentences))


def generate(n_train: int = 300, n_dev: int = 120, train_questions: int = 2, seed: int = SEED,
             corpus_path: str | Path | None = None) -> dict:
    """The probe: ``{"passages": [...], "train": [...], "dev": [...]}`` (plain data, deterministic in ``seed``).

    ``n_train``/``n_dev`` people; each training person is asked ``train_questions`` of their facts (never a
    held-out relation), each dev person one (relations round-robin, the held-out one included).
    """
    rng = random.Random(seed)
    taken = corpus_words(paths.resolve(corpus_path or paths.sample_corpus()))
    taken |= {w.lower() for r in RELATIONS for s in (*r.sentences, r.question, *r.values) for w in re.findall(
        r"[A-Za-z]+", s)}
    names = invented_names(rng, n_train + n_dev, taken)
    asked_in_train = [r for r in RELATIONS if r.name not in HELD_OUT]
    people, train, dev = [], [], []
    for i, name in enumerate(names):
        is_dev = i >= n_train
        if is_dev:        # round-robin over every relation: the first 6k dev questions are balanced
            target = RELATIONS[(i - n_train) % len(RELATIONS)]
            others = rng.sample([r for r in RELATIONS if r is not target], FACTS_PER_PASSAGE - 1)
            chosen = [target, *others]
        else:
            chosen = rng.sample(list(RELATIONS), FACTS_PER_PASSAGE)
            if not any(r in asked_in_train for r in chosen):
                continue
        rng.shuffle(chosen)
        person = _person(rng, name, i, chosen)
        people.append(person)
        if is_dev:
            asked = [target]
        else:
            allowed = [r for r in chosen if r in asked_in_train]
            asked = rng.sample(allowed, min(train_questions, len(allowed)))
        for relation in asked:
            record = {"question": relation.question.format(n=name), "answer": [person.facts[relation.name]],
                      "relation": relation.name, "entity": name, "passage_id": person.passage_id}
            (dev if is_dev else train).append(record)
    return {"version": VERSION, "seed": seed, "passages": people, "train": train, "dev": dev}


def passages_tsv(people: list[Person]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(corpus.TSV_HEADER)
    for p in people:
        writer.writerow([p.passage_id, p.passage, p.name])
    return out.getvalue()


def write(folder: str | Path, **kwargs) -> dict[str, Path]:
    """Generate the probe and write its files into ``folder`` (atomic, byte-for-byte reproducible)."""
    folder = paths.resolve(folder)
    probe = generate(**kwargs)
    files = {"passages.tsv": passages_tsv(probe["passages"])}
    for split in ("train", "dev"):
        files[f"{split}.json"] = json.dumps(probe[split], indent=1, ensure_ascii=False) + "\n"
        gold = [{"qid": i, "gold_ids": [r["passage_id"]]} for i, r in enumerate(probe[split])]
        files[f"gold_passages_{split}.json"] = json.dumps(gold, ensure_ascii=False) + "\n"
    return {name: artifacts.write_text(folder / name, text) for name, text in files.items()}


def passages_file(folder: str | Path | None = None) -> Path:
    return paths.resolve(folder or paths.sample_dir() / "probe") / "passages.tsv"


def transfer_passages_file() -> Path:
    """The transfer split's passages (:mod:`regrad_lib.data.probe_transfer`)."""
    return paths.sample_dir() / "probe_transfer" / "passages.tsv"


def combined_corpus(base: str | Path, probe_passages: str | Path | None = None, transfer: bool = False,
                    suffix: str = "probe") -> Path:
    """A corpus file holding ``base``'s passages then the probe's (``probe_passages``, named ``suffix``):
    ``data/corpora/<base>+<suffix>.tsv``; with
    ``transfer`` also the transfer split's (:mod:`regrad_lib.data.probe_transfer`): ``<base>+probe+transfer.tsv``, a
    separate index, so the meta-training questions never retrieve a transfer passage.

    Written once (atomically) and rewritten only when an input changes (their signatures are kept in a sidecar),
    so 01_index reopens its index instead of rebuilding it.
    """

    base, extra = paths.resolve(base), paths.resolve(probe_passages or passages_file())
    extras = {suffix: extra, **({"transfer": transfer_passages_file()} if transfer else {})}
    for f in (base, *extras.values()):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: the combined corpus needs the base corpus and the probe's "
                                    "passages.tsv (python -m regrad_lib.data.probe --write data/sample/probe; "
                                    "python -m regrad_lib.data.probe_transfer --write data/sample/probe_transfer)")
    if corpus.file_kind(base) != "tsv" or base.suffix == ".gz":
        raise ValueError(f"{paths.relative(base)}: the probe can be added to a plain DPR .tsv corpus only")
    stem = base.name[: -len(".tsv")]
    target = paths.work_root() / "data" / "corpora" / f"{stem}+{'+'.join(extras)}.tsv"
    sidecar = target.with_name(target.name + ".sources.json")
    sources = {"base": corpus.signature(base), **{k: corpus.signature(f) for k, f in extras.items()}}
    if target.is_file() and sidecar.is_file() and artifacts.read_json(sidecar) == sources:
        return target
    with artifacts.atomic_path(target) as tmp, tmp.open("wb") as out:
        for source, skip_header in ((base, False), *((f, True) for f in extras.values())):
            with source.open("rb") as f:
                if skip_header:
                    f.readline()
                data = f.read()
            out.write(data if data.endswith(b"\n") or not data else data + b"\n")
    artifacts.write_json(sidecar, sources)
    log.info("wrote %s (%s + %s)", paths.relative(target), paths.relative(base),
             " + ".join(paths.relative(f) for f in extras.values()))
    return target


def relation_groups(dataset_dir: str | Path, split: str = "dev") -> dict[str, str]:
    """``{test_id: relation}`` of a probe split (test_id = position in the file); held-out relations are
    labelled ``"<relation> (held out)"``."""
    file = paths.resolve(dataset_dir) / f"{split}.json"
    if not file.is_file():
        raise FileNotFoundError(f"{paths.relative(file)} not found: the probe's questions "
                                "(python -m regrad_lib.data.probe --write data/sample/probe)")
    return {str(i): r["relation"] + (" (held out)" if r["relation"] in HELD_OUT else "")
            for i, r in enumerate(artifacts.read_json(file))}


def write_command(argv: list[str] | None, what: str, example: str, write_files) -> None:
    """The command line of a deterministic generator: ``--write FOLDER`` runs ``write_files(FOLDER)`` (which returns
    ``{name: path}``) and logs every file written."""
    parser = argparse.ArgumentParser(description=f"Write {what} (deterministic).")
    parser.add_argument("--write", required=True, help=f"output folder, e.g. {example}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_files(args.write).values():
        log.info("wrote %s", paths.relative(path))


def main(argv: list[str] | None = None) -> None:
    write_command(argv, "the knowledge-injection probe", "data/sample/probe", write)


if __name__ == "__main__":
    main()
