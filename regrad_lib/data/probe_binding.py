"""The binding probe: families of invented people who share a surname and differ in the value of one relation.

The knowledge-injection probe (:mod:`regrad_lib.data.probe`) puts one invented person in a question's top-k; an update
that carries "the passage's value of the asked relation" into the answer passes it without binding the value to
the person. Here every family of three people shares a surname (first names unique), each member has one passage
of three facts, and the family's relation has a different value for each member, e.g.

    "Dravik Solmere works as a baker. …"   "Tavel Solmere works as a pilot. …"   "Hubim Solmere works as a nurse. …"

The question names one member ("What is the job of Tavel Solmere?"). BM25 retrieves the family by itself: the asked
member's passage matches the first name and the surname, the two others the surname (unique to the family, so its
IDF is high); no passage is pinned. So each question's top-3 holds the asked person and two distractor people with
the same relation and other values, and the answer shows which one the method picked (:mod:`regrad_lib.reporting.binding_report`).

Name-swap control: every member of a family is asked, so the same three passages come with each of the three names.
A method that ignores the name answers the same value for all three (at most one right); a method that binds
answers each its own value. ReGrad's update is the summed gradient of the three passages, identical for the three
questions: only the question differs. Dev questions are ordered member by member (all first members, then all
second, then all third), so ``shift`` (question ``i-1``'s passages) takes another family's passages.

``python -m regrad_lib.data.probe_binding --write data/sample/probe_binding`` writes ``passages.tsv``, ``train.json``,
``dev.json`` and ``gold_passages_{train,dev}.json`` (deterministic in the seed). Records are the generic
``{question, answer}`` form plus ``relation``, ``entity``, ``passage_id``, ``family`` and ``distractors`` (the other
members' ``entity``, ``value``, ``passage_id``). Names are checked against the bundled corpus and the probe's
passages. :func:`combined_corpus` adds the passages to the probe's combined corpus (01_index's ``probe_binding``,
:func:`corpora.prepare`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from regrad_lib.data import probe
from regrad_lib.io import artifacts, paths

VERSION = 1
SEED = 20261205
FAMILY = 3                    # people per family: the asked one and two distractors


def _family_names(rng: random.Random, n_families: int, taken: set[str]) -> list[list[str]]:
    """``n_families`` lists of ``FAMILY`` full names sharing a surname; every first name and every surname unique."""
    names = probe.invented_names(rng, n_families * FAMILY, taken)        # unique first and last names, none in ``taken``
    out = []
    for f in range(n_families):
        members = names[f * FAMILY:(f + 1) * FAMILY]
        surname = members[0].split()[1]
        out.append([f"{m.split()[0]} {surname}" for m in members])
    return out


def _taken_words(corpus_path: str | Path | None, probe_passages: str | Path | None) -> set[str]:
    words = probe.corpus_words(paths.resolve(corpus_path or paths.sample_corpus()))
    extra = paths.resolve(probe_passages or probe.passages_file())
    if extra.is_file():
        words |= probe.corpus_words(extra)
    return words | {w.lower() for r in probe.RELATIONS for s in (*r.sentences, r.question, *r.values)
                    for w in re.findall(r"[A-Za-z]+", s)}


def generate(n_train_families: int = 60, n_dev_families: int = 20, seed: int = SEED,
             corpus_path: str | Path | None = None, probe_passages: str | Path | None = None) -> dict:
    """The binding probe: ``{"passages": [...], "train": [...], "dev": [...]}`` (plain data, deterministic in
    ``seed``). Each family gets one relation (round-robin over the probe's relations) with ``FAMILY`` different
    values; each member's passage states it plus two other facts of their own; every member is asked it."""
    rng = random.Random(seed)
    families = _family_names(rng, n_train_families + n_dev_families, _taken_words(corpus_path, probe_passages))
    people, splits = [], {"train": [], "dev": []}
    for f, members in enumerate(families):
        split = "dev" if f >= n_train_families else "train"
        relation = probe.RELATIONS[f % len(probe.RELATIONS)]
        values = rng.sample(relation.values, FAMILY)
        family = []
        for m, (name, value) in enumerate(zip(members, values)):
            others = rng.sample([r for r in probe.RELATIONS if r is not relation], probe.FACTS_PER_PASSAGE - 1)
            facts = {relation.name: value, **{r.name: rng.choice(r.values) for r in others}}
            order = list(facts)
            rng.shuffle(order)
            text = " ".join(probe.fact_sentence(rng.choice(probe.BY_NAME[r].sentences), name, facts[r]) for r in order)
            family.append(probe.Person(name, f"binding-{len(people):05d}", facts, text))
            people.append(family[-1])
        for m, person in enumerate(family):
            splits[split].append((m, {
                "question": relation.question.format(n=person.name), "answer": [person.facts[relation.name]],
                "relation": relation.name, "entity": person.name, "passage_id": person.passage_id,
                "family": f"family-{f:04d}",
                "distractors": [{"entity": o.name, "value": o.facts[relation.name], "passage_id": o.passage_id}
                                for o in family if o is not person]}))
    # member by member: question i-1 (shift's passages) belongs to another family
    ordered = {s: [r for _, r in sorted(rows, key=lambda mr: mr[0])] for s, rows in splits.items()}
    return {"version": VERSION, "seed": seed, "passages": people, **ordered}


def write(folder: str | Path, **kwargs) -> dict[str, Path]:
    """Generate the binding probe and write its files into ``folder`` (atomic, byte-for-byte reproducible)."""
    folder = paths.resolve(folder)
    data = generate(**kwargs)
    files = {"passages.tsv": probe.passages_tsv(data["passages"])}
    for split in ("train", "dev"):
        files[f"{split}.json"] = json.dumps(data[split], indent=1, ensure_ascii=False) + "\n"
        gold = [{"qid": i, "gold_ids": [r["passage_id"]]} for i, r in enumerate(data[split])]
        files[f"gold_passages_{split}.json"] = json.dumps(gold, ensure_ascii=False) + "\n"
    return {name: artifacts.write_text(folder / name, text) for name, text in files.items()}


def passages_file(folder: str | Path | None = None) -> Path:
    return paths.resolve(folder or paths.sample_dir() / "probe_binding") / "passages.tsv"


def combined_corpus(base: str | Path) -> Path:
    """``base`` + the probe's passages + the binding probe's: ``data/corpora/<base>+probe+binding.tsv``
    (written once, rewritten only when an input changes, as :func:`probe.combined_corpus`)."""
    return probe.combined_corpus(probe.combined_corpus(base), passages_file(), suffix="binding")


POSITION_FREE = "dev_position_free"     # the augmented dev split whose passages reach every method in one order


def position_free(records: list[dict]) -> list[dict]:
    """Augmented records with each question's passages in an order that does not depend on who is asked: by passage
    id. The asked member's passage is ranked first by BM25, so a prompt in rank order tells RAG which passage is
    about the asked person (a position cue regrad's order-free sum has not); here the three members' questions share
    one order (their top-3 is the family). Every per-passage field (``passages``, ``passage_ids``, ``titles``,
    ``scores``) moves together."""
    fields = ("passages", "passage_ids", "titles", "scores")
    out = []
    for i, r in enumerate(records):
        lengths = {f: len(r[f]) for f in fields if f in r}
        if len(set(lengths.values())) != 1 or "passage_ids" not in lengths:
            raise ValueError(f"augmented record {i} (test_id {r.get('test_id')!r}): per-passage fields of unequal "
                             f"length {lengths}; re-run 02_augment")
        order = sorted(range(lengths["passage_ids"]), key=lambda k: str(r["passage_ids"][k]))
        out.append({**r, **{f: [r[f][k] for k in order] for f in lengths}})
    return out


def write_position_free(source: str = "dev", overwrite: bool = True) -> Path:
    """``data/augmented/probe_binding/dev_position_free.json``: 02_augment's ``source`` split in the position-free
    order (:func:`position_free`), for 04_encode and 05_evaluate with ``split = "dev_position_free"``."""
    dataset = "probe_binding"
    records = artifacts.read_json(paths.augmented_file(dataset, source))
    target = paths.augmented_file(dataset, POSITION_FREE)
    artifacts.write_json(target, position_free(records), overwrite=overwrite)
    return target


def questions(dataset_dir: str | Path, split: str = "dev") -> list[dict]:
    """The records of a binding-probe split (test_id = position), checked for the fields the analysis reads."""
    file = paths.resolve(dataset_dir) / f"{split}.json"
    if not file.is_file():
        raise FileNotFoundError(f"{paths.relative(file)} not found: the binding probe's questions "
                                "(python -m regrad_lib.data.probe_binding --write data/sample/probe_binding)")
    records = artifacts.read_json(file)
    for i, r in enumerate(records):
        missing = [k for k in ("answer", "entity", "family", "distractors") if k not in r]
        if missing:
            raise ValueError(f"{paths.relative(file)} record {i}: lacks {missing}; regenerate it "
                             "(python -m regrad_lib.data.probe_binding --write data/sample/probe_binding)")
    return records


def main(argv: list[str] | None = None) -> None:
    probe.write_command(argv, "the binding probe", "data/sample/probe_binding", write)


if __name__ == "__main__":
    main()
