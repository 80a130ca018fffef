"""The transfer frontier: meta-train a variant of a preset, then measure it on the transfer split's *validation*
questions (never the dev questions 05/06 report; PopQA rows 300–499 are never read) — training time, the
validation meta loss, and regrad / shift / no_update EM and answer NLL out of template, with a gamma sweep.

Every phase resumes and fits in a short job, so a long study is several locked jobs:

    REGRAD_WORK=$PWD/.work OMP_NUM_THREADS=1 flock /tmp/regrad-heavy.lock timeout 590 \
        .venv/bin/python -m experiments.transfer_frontier train --run tf-alr3 --train '{"alpha_learning_rate": 3.0}'
    ... eval --run tf-alr3 [--gammas 0.5,2,4] [--methods regrad,shift,no_update,rag]
    ... report --run demo --run tf-alr3 [--markdown]   # one JSON line per run, or the table (no model loaded)

``paraphrase`` writes the template-diversity variant's training questions (dataset ``probe_para``: the probe's
training questions, each with one of three templates; then ``train --train-datasets popqa,hotpotqa,probe_para``).
``wide`` writes the wide variant's (``probe_wide``: 200 other invented people, five training-only relations, three of
them with invented answers, three templates each, half the passages narratives of realistic length; its own index
``miniwiki-wide`` = the demo corpus + these passages; then ``train --train-datasets popqa,hotpotqa,probe,probe_wide``).
``train`` meta-trains ``outputs/<run>/`` (resuming its checkpoint after a killed job; ``--save-steps`` keeps the loss
of a kill small; a finished run is kept). ``eval`` encodes the validation questions' passages into the run's bank
and answers them (``results/<run>/evaluations/transfer-validation/``). It needs the transfer index and the
validation questions' augmented file of that work root:

    python -m regrad_lib.runner.pipeline --run demo --steps 01-02 --datasets probe_transfer -p index miniwiki-transfer \
        -p transfer true -p train_datasets '[]'
    python -c "from regrad_lib import retrieval; from regrad_lib.retrieval import augment;
    augment.augment('probe_transfer', 'validation', \
        retriever=retrieval.open('miniwiki-transfer'), data_dir='data/sample/probe_transfer')"
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from regrad_lib.io import result_files

DATASET, SPLIT, EVALUATION = "probe_transfer", "validation_all", "transfer-validation"
# More question templates for the probe's meta-trained relations (the template-diversity variant): none is a
# template of the transfer split, each shares no content word with the relation's passage sentences.
PARAPHRASES = {
    "birthplace": ("What is the birth city of {n}?", "{n} first saw daylight in which city?"),
    "occupation": ("What does {n} do for a living?", "Which trade does {n} follow?"),
    "instrument": ("What musical instrument is {n} known for?", "On what instrument can {n} be heard?"),
    "colour": ("Which colour does {n} prefer?", "What hue does {n} like best?"),
    "country": ("What country is {n} based in?", "Which nation is {n} settled in?"),
}


def _train(a) -> None:
    from regrad_lib import config
    from regrad_lib.training import train

    overrides = {"save_steps": a.save_steps, **json.loads(a.train)}
    preset = config.load_preset(a.preset, {"train": overrides, "learner": json.loads(a.learner)})
    summary = train.train(a.run, preset, a.train_datasets.split(","), limit=a.max_train_tasks)
    print(json.dumps({"run": a.run, "steps": summary["steps"], "tasks": summary["tasks"],
                      "best_eval": summary["best_eval"]}))


def _paraphrase(a) -> None:
    """``probe_para``: the probe's training questions, each asked with one of three templates (the original and
    two of :data:`PARAPHRASES`, seeded), augmented from the demo index like the probe's."""
    import random

    from regrad_lib import retrieval
    from regrad_lib.data import probe_transfer
    from regrad_lib.io import artifacts, paths
    from regrad_lib.retrieval import augment

    assert not {q for qs in PARAPHRASES.values() for q in qs} & {q for r in probe_transfer.RELATIONS
                                                                 for q in r.questions}
    rng = random.Random(a.seed)
    records = artifacts.read_json(paths.sample_dir() / "probe" / "train.json")
    for r in records:
        template = rng.choice([None, *PARAPHRASES[r["relation"]]])
        if template:
            r["question"] = template.format(n=r["entity"])
    folder = paths.work_root() / "data" / "probe_para"
    artifacts.write_json(folder / "train.json", records, overwrite=True)
    print(augment.augment("probe_para", "train", retriever=retrieval.open(a.index), data_dir=folder, topk=3))


# The wide variant's training-only relations (``probe_wide``): none a relation, sentence, question template or value of
# the probe or of its transfer split; invented answers (a horse, a friend, a river) beside closed ones (flower,
# dish); three question templates each; half the passages narratives of realistic length (fillers of their own, not
# the transfer split's), half three plain sentences. It measures "training on invented-answer relations", template
# diversity and passage length in meta-training together.
WIDE_RELATIONS = {
    "flower": (("rose", "tulip", "daisy", "lily", "orchid", "poppy", "lavender", "peony", "iris", "sunflower",
                "jasmine", "magnolia"),
               ("{n} grows {v} in the front garden.", "The balcony of {n} is full of {v} in bloom."),
               ("Which flower does {n} cultivate?", "What blooms does {n} tend?", "Which plant does {n} raise?")),
    "dish": (("soup", "curry", "pasta", "salad", "risotto", "omelette", "stew", "pancakes", "dumplings", "paella",
              "lasagne", "couscous"),
             ("{n} cooks {v} for guests every Friday.", "The signature recipe of {n} is {v}."),
             ("What meal is {n} famous for making?", "Which food does {n} prepare best?",
              "What would {n} serve at a dinner party?")),
    "horse": ((), ("{n} rides a horse called {v}.", "In the stable {n} keeps a mare named {v}."),
              ("What is the horse of {n} called?", "Which horse does {n} ride?", "Name the mare of {n}.")),
    "friend": ((), ("{n} has been close to {v} since school.", "{n} spends holidays with an old friend, {v}."),
               ("Who is the best friend of {n}?", "Which person is {n} closest to?",
                "With whom does {n} go on holiday?")),
    "river": ((), ("{n} goes fishing on the river {v} every Sunday.", "{n} lives on the bank of the river {v}."),
              ("Beside which river is the home of {n}?", "What river does {n} fish in?",
               "On which river does {n} spend Sundays?")),
}
WIDE_FILLERS = (
    "{f} collects old coins and sorts them by year.", "The morning starts with a cup of something hot.",
    "Colleagues know {f} for punctual replies.", "A small dog from next door often visits the yard.",
    "{f} prefers trains to planes on long trips.", "The attic is full of boxes nobody has opened in years.",
    "Board games come out whenever the cousins visit.", "{f} learned to swim late, at the age of thirty.",
    "Saturday afternoons belong to the crossword.", "A wooden clock in the hall chimes every hour.",
    "{f} keeps a jar of buttons for no particular reason.", "The car is older than most of the neighbours.",
    "{f} writes shopping lists on the backs of envelopes.", "Most holidays are spent within a day's drive.",
)


def wide_data(seed: int = 42, n_people: int = 200) -> tuple[list, list[dict]]:
    """``probe_wide``'s people (``probe.Person``) and training records (two questions per person), deterministic in
    ``seed``; names, invented answers and templates apart from the probe's and the transfer split's."""
    import random
    import re

    from regrad_lib.data import probe, probe_transfer
    from regrad_lib.io import paths

    transfer_templates = {q for r in probe_transfer.RELATIONS for q in r.questions}
    probe_templates = {r.question for r in probe.RELATIONS} | {q for qs in PARAPHRASES.values() for q in qs}
    assert not {q for _, _, qs in WIDE_RELATIONS.values() for q in qs} & (transfer_templates | probe_templates)
    rng = random.Random(seed)
    taken = probe.corpus_words(paths.resolve(paths.sample_corpus()))
    taken |= {w.lower() for s in [*transfer_templates, *probe_templates, *probe_transfer.FILLERS, *WIDE_FILLERS]
              for w in re.findall(r"[A-Za-z]+", s)}
    taken |= {w.lower() for r in (*probe.RELATIONS, *probe_transfer.RELATIONS) for v in r.values for w in v.split()}
    for text in (probe.passages_file(), probe.transfer_passages_file()):
        taken |= {w.lower() for w in re.findall(r"[A-Za-z]+", text.read_text(encoding="utf-8"))}
    names = probe.invented_names(rng, n_people, taken)
    taken |= {w.lower() for n in names for w in n.split()}
    people, records = [], []
    for i, name in enumerate(names):
        chosen = rng.sample(list(WIDE_RELATIONS), probe.FACTS_PER_PASSAGE)
        facts = {}
        for rel in chosen:
            values = WIDE_RELATIONS[rel][0]
            if values:
                facts[rel] = rng.choice(values)
            elif rel == "friend":
                facts[rel] = probe.invented_names(rng, 1, taken)[0]
                taken |= {w.lower() for w in facts[rel].split()}
            else:
                while (v := (probe.syllable(rng) + probe.syllable(rng) + rng.choice("nrl") + "o").capitalize()
                       ).lower() in taken:
                    pass
                taken.add(v.lower())
                facts[rel] = v
        sentences = [probe.fact_sentence(rng.choice(WIDE_RELATIONS[r][1]), name, v) for r, v in facts.items()]
        if i % 2:       # a narrative of realistic length: each fact then filler, then filler up to 74–90 words
            first, fillers, mixed = name.split()[0], rng.sample(WIDE_FILLERS, len(WIDE_FILLERS)), []
            for s in sentences:
                mixed += [s, fillers.pop().format(f=first)]
            target = rng.randint(74, 90)
            while fillers and len(" ".join(mixed).split()) < target:
                mixed.append(fillers.pop().format(f=first))
            sentences = mixed
        person = probe.Person(name, f"wide-{i:05d}", facts, " ".join(sentences))
        people.append(person)
        for rel in rng.sample(chosen, 2):
            records.append({"question": rng.choice(WIDE_RELATIONS[rel][2]).format(n=name), "answer": [facts[rel]],
                            "relation": rel, "entity": name, "passage_id": person.passage_id,
                            "answer_type": "closed" if WIDE_RELATIONS[rel][0] else "invented"})
    return people, records


def _wide(a) -> None:
    """``probe_wide`` (train.json, passages.tsv) in the work root, an index ``<index>-wide`` = the demo corpus + its
    passages, and its augmented training file."""
    from regrad_lib import retrieval
    from regrad_lib.data import probe
    from regrad_lib.io import artifacts, paths
    from regrad_lib.retrieval import augment

    people, records = wide_data(a.seed, a.wide_people)
    folder = paths.work_root() / "data" / "probe_wide"
    artifacts.write_text(folder / "passages.tsv", probe.passages_tsv(people))
    artifacts.write_json(folder / "train.json", records, overwrite=True)
    base = probe.combined_corpus(paths.sample_corpus())
    corpus_path = probe.combined_corpus(base, folder / "passages.tsv", suffix="wide")
    retriever = retrieval.build(corpus_path, f"{a.index}-wide")      # a finished index of this corpus is reopened
    print(augment.augment("probe_wide", "train", retriever=retriever, data_dir=folder, topk=3))


def _eval(a) -> None:
    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import evaluate, sweeps

    learner = Learner.from_run(a.run)
    encode.encode_all(encode.EncodeSettings(run=a.run, datasets=[DATASET], split=SPLIT), learner)
    common = dict(split=SPLIT, learner=learner, evaluation=EVALUATION)
    evaluate.evaluate_all(a.run, [DATASET], a.methods.split(","), **common)
    gammas = [float(g) for g in a.gammas.split(",") if g.strip()]
    if gammas:
        sweeps.sweep_all(a.run, [DATASET], gammas=gammas, topks=[3], **common)


def _measure(run: str, records: list[dict]) -> dict:
    """One run's figures on the validation questions (what ``report`` prints)."""
    from regrad_lib.data import metrics
    from regrad_lib.io import artifacts, paths
    from regrad_lib.reporting import analysis, effects, transfer_report

    out: dict = {"run": run}
    summary = artifacts.read_json(paths.train_summary_file(run))
    args = artifacts.read_json(paths.output_dir(run) / "train_args.json")
    out.update({k: summary.get(k) for k in ("train_datasets", "steps", "tasks", "wall_s", "best_eval")})
    out["alpha_learning_rate"] = args.get("alpha_learning_rate")
    for method in ("regrad", "shift", "no_update", "rag"):
        try:
            rows = result_files.method_predictions(run, DATASET, method, EVALUATION)
        except FileNotFoundError:
            continue
        em = [metrics.score(r["prediction"], r["answers"])["em"] for r in rows]
        nll = [r["answer_nll"] for r in rows]
        kinds = [records[int(r["test_id"])]["answer_type"] for r in rows]
        out[method] = {"em": round(100 * sum(em) / len(em), 1), "nll": round(sum(nll) / len(nll), 3),
                       **{f"em_{k}": round(100 * sum(e for e, t in zip(em, kinds) if t == k)
                                           / max(1, kinds.count(k)), 1) for k in ("closed", "invented")}}
        if method == "regrad":
            out[method]["by_id"] = {str(r["test_id"]): (e, n) for r, e, n in zip(rows, em, nll)}
            echoes = [transfer_report.echo_kind(r["prediction"], records[int(r["test_id"])]["entity"], r["answers"])
                      for r in rows]
            out[method]["own_name_share"] = round(echoes.count("name") / len(echoes), 3)
            out[method]["fragment_share"] = round(echoes.count("fragment") / len(echoes), 3)
    try:
        d = effects.paired_nll_differences(run, DATASET, "regrad", "shift", EVALUATION)
        out["regrad_minus_shift_nll"] = f"{d.mean:+.2f} ± {d.se:.2f} ({d.n_lower}/{d.n})"
    except (FileNotFoundError, ValueError):
        pass
    try:
        sweep = [s for s in analysis.read_sweeps(run, EVALUATION) if s.dataset == DATASET]
        out["gamma_sweep"] = {f"{s.gamma:g}": {"em": round(s.em, 1), "nll": round(s.nll, 3)} for s in sweep}
    except FileNotFoundError:
        pass
    return out


def against_first(measured: list[dict]) -> None:
    """Each run's regrad against the first run's on the same questions: paired answer-NLL difference (mean ± SE,
    lower on) and the questions only one of them answers exactly, with McNemar's exact p."""
    from regrad_lib.reporting.effects import mcnemar_exact, paired_difference

    base = measured[0].get("regrad", {}).get("by_id", {})
    for m in measured[1:]:
        mine = m.get("regrad", {}).get("by_id", {})
        ids = [i for i in mine if i in base]
        if not ids:
            continue
        d = paired_difference({i: mine[i][1] for i in ids}, {i: base[i][1] for i in ids})
        only_mine = sum(mine[i][0] > base[i][0] for i in ids)
        only_base = sum(base[i][0] > mine[i][0] for i in ids)
        m["vs_first"] = (f"{d.mean:+.2f} ± {d.se:.2f} ({d.n_lower}/{d.n}); EM {only_mine} / {only_base}, "
                         f"p = {mcnemar_exact(only_mine, only_base):.2g}")


def markdown_table(measured: list[dict], n_questions: int) -> str:
    """The frontier table: one row per run, rag (which no meta-training changes) named once below it."""
    head = ("| run | meta-training data | steps | α lr | training s | val. meta loss (best) | regrad EM (closed / "
            "invented) | regrad answer NLL | shift EM | no_update EM | regrad − shift NLL (lower on) | regrad own "
            "name / fragment % | γ sweep EM / NLL | regrad against the first run: NLL (lower on); EM only this / "
            "only first |")
    lines = [f"**The transfer frontier: variants of the demo preset on the transfer split's {n_questions} validation "
             "questions** (other people than its dev questions; training time as measured on this machine)\n",
             head, "|" + "---|" * (head.count("|") - 1)]
    for m in measured:
        r, best = m.get("regrad", {}), m.get("best_eval") or {}
        sweep = "; ".join(f"{g}: {v['em']:.1f} / {v['nll']:.2f}" for g, v in (m.get("gamma_sweep") or {}).items())
        lines.append(" | ".join([
            f"| {m['run']}", ", ".join(m.get("train_datasets") or []), str(m.get("steps")),
            f"{m.get('alpha_learning_rate'):g}", f"{m.get('wall_s') or 0:.0f}",
            f"{best.get('eval_loss'):.3f} (step {best.get('step')})" if best.get("eval_loss") is not None else "–",
            f"{r['em']:.1f} ({r['em_closed']:.1f} / {r['em_invented']:.1f})" if r else "–",
            f"{r['nll']:.2f}" if r else "–",
            f"{m['shift']['em']:.1f}" if "shift" in m else "–",
            f"{m['no_update']['em']:.1f}" if "no_update" in m else "–",
            m.get("regrad_minus_shift_nll", "–"),
            f"{100 * r['own_name_share']:.1f} / {100 * r['fragment_share']:.1f}" if r else "–",
            sweep or "–", m.get("vs_first", "(the baseline)" if m is measured[0] else "–")]) + " |")
    lines.append("\nThe validation meta loss is each run's own held-out slice of its meta-training tasks: comparable "
                 "only between runs with the same meta-training data. The regrad columns use the trained γ; the γ "
                 "sweep rescales the same update.")
    rag = next((m["rag"] for m in measured if "rag" in m), None)
    if rag:
        lines.append(f"\nrag (the base model with the passages in the prompt; no meta-training changes it): EM "
                     f"{rag['em']:.1f} ({rag['em_closed']:.1f} / {rag['em_invented']:.1f}), "
                     f"answer NLL {rag['nll']:.2f}.")
    return "\n".join(lines)


def _report(a) -> None:
    from regrad_lib.io import artifacts, paths

    records = artifacts.read_json(paths.sample_dir() / DATASET / "validation.json")
    measured = [_measure(run, records) for run in a.run]
    against_first(measured)
    for m in measured:
        m.get("regrad", {}).pop("by_id", None)
    print(markdown_table(measured, len(records)) if a.markdown else "\n".join(json.dumps(m) for m in measured))


# The measured variants of the demo preset (run name → train_args overrides, meta-training datasets); "demo" is the
# demo's own run, measured as it is. `make experiments-transfer-frontier` runs them all (``study``).
VARIANTS = {
    "demo": None,
    "tf-steps15": ({"max_steps": 15}, "popqa,hotpotqa,probe"),
    "tf-steps60": ({"max_steps": 60}, "popqa,hotpotqa,probe"),
    "tf-alr3": ({"alpha_learning_rate": 3.0}, "popqa,hotpotqa,probe"),
    "tf-para": ({}, "popqa,hotpotqa,probe_para"),
    "tf-wide": ({}, "popqa,hotpotqa,probe,probe_wide"),
    "tf-lr4e-3": ({"learning_rate": 0.004}, "popqa,hotpotqa,probe"),     # twice the LoRA step instead of 60 steps
    "tf-wide60": ({"max_steps": 60}, "popqa,hotpotqa,probe,probe_wide"),
    # another seed (task order, validation slice) of the demo preset and of the best variant: how much is seed noise
    "tf-seed43": ({"seed": 43}, "popqa,hotpotqa,probe"),
    "tf-wide60-seed43": ({"max_steps": 60, "seed": 43}, "popqa,hotpotqa,probe,probe_wide"),
}


def _study(a) -> None:
    """Everything, resuming: the validation questions' augmented file, both extra training sets, every variant
    trained and measured (finished runs, banks and methods are kept), then the table on stdout."""
    import contextlib

    import torch

    from regrad_lib import retrieval
    from regrad_lib.io import paths, run_state
    from regrad_lib.retrieval import augment

    torch.set_num_threads(a.threads)
    with contextlib.redirect_stdout(sys.stderr):
        augment.augment(DATASET, "validation", retriever=retrieval.open(a.transfer_index),
                        data_dir=paths.sample_dir() / DATASET)
        _paraphrase(a)
        _wide(a)
        for run, variant in VARIANTS.items():
            if variant is not None and not run_state.run_finished(run):
                a.run, (a.train, a.train_datasets) = run, (json.dumps(variant[0]), variant[1])
                _train(a)
            a.run, a.methods = run, "regrad,shift,no_update" + (",rag" if variant is None else "")
            _eval(a)
    a.run, a.markdown = list(VARIANTS), True
    _report(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("paraphrase", "wide", "train", "eval", "report", "study"))
    p.add_argument("--run", action="append", help="run name (report: several; study: all of VARIANTS)")
    p.add_argument("--preset", default="smollm2-135m-instruct")
    p.add_argument("--train", default="{}", help="train_args overrides (JSON object)")
    p.add_argument("--learner", default="{}", help="learner_config overrides (JSON object)")
    p.add_argument("--train-datasets", default="popqa,hotpotqa,probe")
    p.add_argument("--max-train-tasks", type=int, default=None)
    p.add_argument("--save-steps", type=int, default=5, help="checkpoint every N steps (a killed job resumes)")
    p.add_argument("--methods", default="regrad,shift,no_update")
    p.add_argument("--gammas", default="", help="gamma sweep on the validation questions, e.g. 0.5,2,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", action="store_true", help="report: the frontier table instead of JSON lines")
    p.add_argument("--seed", type=int, default=42, help="paraphrase: which template each question gets")
    p.add_argument("--index", default="miniwiki", help="paraphrase: the demo index (no transfer passages)")
    p.add_argument("--wide-people", type=int, default=200, help="wide: invented people (two questions each)")
    p.add_argument("--transfer-index", default="miniwiki-transfer", help="study: the transfer split's index")
    a = p.parse_args()
    if not a.run and a.phase in ("train", "eval", "report"):
        p.error(f"{a.phase} needs --run")
    logging.basicConfig(level=logging.WARNING)
    if a.phase in ("train", "eval"):
        import torch

        torch.set_num_threads(a.threads)
        a.run = a.run[0]
    {"paraphrase": _paraphrase, "wide": _wide, "train": _train, "eval": _eval, "report": _report,
     "study": _study}[a.phase](a)


if __name__ == "__main__":
    main()
