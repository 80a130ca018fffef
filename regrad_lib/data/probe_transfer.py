"""The probe's transfer split: relations, question templates and passage styles that meta-training never sees.

``python -m regrad_lib.data.probe_transfer --write data/sample/probe_transfer`` writes (dataset
``probe_transfer``, method.md "The probe"): other invented people, each with one passage (ids ``transfer-…``) of
three facts from :data:`RELATIONS` below — none of them a relation, a sentence, a question template or an answer
value of :data:`regrad_lib.data.probe.RELATIONS`, whose questions alone are meta-trained. Two passage styles, half the
people each:

- ``narrative``: a biography of about 100–150 tokens, the three facts between sentences about nothing in
  particular (realistic length: the meta-trained passages are 3 short sentences);
- ``card``: a short record card ("Card of … — hometown: …; pet: …"), 25–50 tokens, a form no training
  passage has.

Answers come from closed vocabularies (``language``, ``pet``, ``subject``: an update must select a known word) or
are invented strings (``hometown``, ``mentor``, ``vessel``: a word no model knows, to be copied from the passage).
Every question is worded apart from every passage sentence (only the name is shared), with two templates per
relation. Files: ``passages.tsv``, ``dev.json`` (reported by 05/06) and ``validation.json`` (other people, the
same templates: for choosing settings, e.g. ``experiments/transfer_frontier.py``), ``gold_passages_{dev,validation}.json``.
Records carry ``relation``, ``entity``, ``passage_id``, ``answer_type`` ("closed" | "invented") and ``style``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from regrad_lib.data import probe
from regrad_lib.io import artifacts, paths

SEED = 20261205
SPLITS = ("dev", "validation")
STYLES = ("narrative", "card")
NARRATIVE_WORDS = (74, 90)       # words of a narrative passage (≈ 100–150 SmolLM2 tokens with its title)


@dataclass(frozen=True)
class TransferRelation:
    name: str
    answer_type: str                 # "closed": values below; "invented": a new word per person
    values: tuple[str, ...]
    sentences: tuple[str, ...]       # narrative sentences; {n} the person, {v} the value
    card_field: str                  # the record card's label
    questions: tuple[str, ...]       # two templates, worded apart from the sentences


RELATIONS = (
    TransferRelation("language", "closed",
                     ("Spanish", "German", "Italian", "Dutch", "Greek", "Swedish", "Hungarian", "Finnish", "Czech",
                      "Danish", "Romanian", "Welsh"),
                     ("With relatives, {n} converses in {v}.", "{n} grew up hearing {v} at the dinner table."),
                     "idiom",
                     ("What language does {n} speak?", "In which tongue does {n} think?")),
    TransferRelation("pet", "closed",
                     ("dog", "cat", "parrot", "rabbit", "hamster", "tortoise", "goldfish", "ferret", "canary",
                      "lizard", "pony", "goat"),
                     ("{n} shares the flat with a {v}.", "Each morning {n} feeds a pet {v}."),
                     "companion",
                     ("Which animal lives with {n}?", "What creature does {n} look after?")),
    TransferRelation("subject", "closed",
                     ("physics", "history", "biology", "economics", "philosophy", "geology", "mathematics",
                      "linguistics", "astronomy", "sociology", "botany", "archaeology"),
                     ("At university {n} earned a degree in {v}.", "{n} spent four years reading {v} at college."),
                     "degree",
                     ("Which discipline did {n} major in?", "What academic field was {n} trained in?")),
    TransferRelation("hometown", "invented", (),
                     ("{n} was raised in the village of {v}.", "The childhood of {n} was spent in {v}."),
                     "birth village",
                     ("Where did {n} grow up?", "Which settlement is the place {n} comes from?")),
    TransferRelation("mentor", "invented", (),
                     ("{n} learned the craft from {v}.", "For years {n} was an apprentice of {v}."),
                     "master",
                     ("Who taught {n}?", "Under whose guidance did {n} train?")),
    TransferRelation("vessel", "invented", (),
                     ("{n} owns a sailing boat called {v}.", "{n} keeps a small yacht named {v} at the harbour."),
                     "boat",
                     ("What is the name of the ship belonging to {n}?", "Which ship does {n} own?")),
)
BY_NAME = {r.name: r for r in RELATIONS}

# Sentences about nothing asked: no relation value, no question word; {f} the person's first name.
FILLERS = (
    "Neighbours describe {f} as quiet, patient and generous with time.",
    "Most days begin with a long walk before breakfast.",
    "{f} keeps a notebook of small observations about the weather.",
    "Friends say the best conversations with {f} happen over tea.",
    "A narrow garden behind the house takes up much of the spare time.",
    "Letters from old classmates still arrive every winter.",
    "On rainy afternoons {f} reorganises a large collection of postcards.",
    "Relatives gather each summer by a lake for a week of picnics.",
    "{f} rarely misses the weekly market on the main square.",
    "The kitchen shelves hold jars of preserves made every autumn.",
    "{f} once spent a month repairing an old bicycle piece by piece.",
    "Evenings usually end with a chapter of a novel.",
    "A photograph of the whole family hangs above the fireplace.",
    "{f} volunteers twice a month at the local library sale.",
    "The walls of the study are lined with maps of distant coasts.",
)
_TOWN_ENDINGS = ("dale", "mere", "brook", "stead", "haven", "combe", "thorpe", "ridge")


@dataclass(frozen=True)
class TransferPerson:
    name: str
    passage_id: str
    style: str
    facts: dict            # relation name -> value
    passage: str


def _invented(rng: random.Random, relation: TransferRelation, taken: set[str]) -> str:
    """A new answer word (a village, a boat) or a new full name (a mentor), absent from ``taken``."""
    while True:
        if relation.name == "mentor":
            value = probe.invented_names(rng, 1, taken)[0]
        elif relation.name == "hometown":
            value = (probe.syllable(rng) + probe.syllable(rng) + rng.choice(_TOWN_ENDINGS)).capitalize()
        else:
            value = (probe.syllable(rng) + probe.syllable(rng) + probe.syllable(rng) + "a").capitalize()
        words = {w.lower() for w in value.split()}
        if not words & taken:
            taken |= words
            return value


def _narrative(rng: random.Random, name: str, facts: dict[str, str]) -> str:
    """The three fact sentences, each followed by filler, then filler up to a drawn word count."""
    first = name.split()[0]
    fillers = rng.sample(FILLERS, len(FILLERS))
    sentences = []
    for rel, value in facts.items():
        sentences.append(probe.fact_sentence(rng.choice(BY_NAME[rel].sentences), name, value))
        sentences.append(fillers.pop().format(f=first))
    target = rng.randint(*NARRATIVE_WORDS)
    while fillers and len(" ".join(sentences).split()) < target:
        sentences.append(fillers.pop().format(f=first))
    return " ".join(sentences)


def _card(name: str, facts: dict[str, str]) -> str:
    fields = "; ".join(f"{BY_NAME[rel].card_field}: {value}" for rel, value in facts.items())
    return f"Card of {name} — {fields}."


def generate(n_dev: int = 60, n_validation: int = 60, seed: int = SEED, corpus_path=None) -> dict:
    """``{"passages": [...], "dev": [...], "validation": [...]}`` (deterministic in ``seed``): one question per
    person, relations round-robin (dev and validation balanced), styles alternating every round; people disjoint from the
    probe's and from each other."""
    rng = random.Random(seed)
    taken = probe.corpus_words(paths.resolve(corpus_path or paths.sample_corpus()))
    taken |= {w.lower() for r in probe.RELATIONS for s in (*r.sentences, r.question, *r.values)
              for w in re.findall(r"[A-Za-z]+", s)}
    taken |= {w.lower() for r in RELATIONS for s in (*r.sentences, *r.questions, *r.values, r.card_field)
              for w in re.findall(r"[A-Za-z]+", s)}
    taken |= {w.lower() for s in FILLERS for w in re.findall(r"[A-Za-z]+", s)}
    taken |= {w.lower() for p in probe.generate(corpus_path=corpus_path)["passages"] for w in p.name.split()}
    counts = {"dev": n_dev, "validation": n_validation}
    names = probe.invented_names(rng, n_dev + n_validation, taken)
    taken |= {w.lower() for n in names for w in n.split()}
    people, out = [], {s: [] for s in SPLITS}
    i = 0
    for split in SPLITS:
        for j in range(counts[split]):
            name = names[i]
            target = RELATIONS[j % len(RELATIONS)]
            chosen = [target, *rng.sample([r for r in RELATIONS if r is not target], probe.FACTS_PER_PASSAGE - 1)]
            rng.shuffle(chosen)
            facts = {r.name: rng.choice(r.values) if r.answer_type == "closed" else _invented(rng, r, taken)
                     for r in chosen}
            style = STYLES[(j // len(RELATIONS)) % len(STYLES)]   # every relation in both styles
            passage = _narrative(rng, name, facts) if style == "narrative" else _card(name, facts)
            person = TransferPerson(name, f"transfer-{i:05d}", style, facts, passage)
            people.append(person)
            out[split].append({"question": rng.choice(target.questions).format(n=name),
                               "answer": [facts[target.name]], "relation": target.name, "entity": name,
                               "passage_id": person.passage_id, "answer_type": target.answer_type, "style": style})
            i += 1
    return {"version": probe.VERSION, "seed": seed, "passages": people, **out}


def files(**kwargs) -> dict[str, str]:
    """The split's files as text, by name."""
    data = generate(**kwargs)
    out = {"passages.tsv": probe.passages_tsv(data["passages"])}
    for split in SPLITS:
        out[f"{split}.json"] = json.dumps(data[split], indent=1, ensure_ascii=False) + "\n"
        gold = [{"qid": i, "gold_ids": [r["passage_id"]]} for i, r in enumerate(data[split])]
        out[f"gold_passages_{split}.json"] = json.dumps(gold, ensure_ascii=False) + "\n"
    return out


def groups(records: list[dict]) -> dict[str, str]:
    """``{test_id: "out of template, closed answers" | "out of template, invented answers"}``."""
    return {str(i): f"out of template, {r['answer_type']} answers" for i, r in enumerate(records)}


def write(folder, **kwargs) -> dict:
    """Generate the transfer split and write its files into ``folder`` (atomic, byte-for-byte reproducible)."""
    folder = paths.resolve(folder)
    return {name: artifacts.write_text(folder / name, text) for name, text in files(**kwargs).items()}


def main(argv: list[str] | None = None) -> None:
    probe.write_command(argv, "the probe's transfer split", "data/sample/probe_transfer", write)


if __name__ == "__main__":
    main()
