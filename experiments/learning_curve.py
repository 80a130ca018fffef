"""How far does meta-training carry? One long meta-training run of the demo preset's model (``smollm2-135m-curve``:
the demo preset to 240 steps, 960 tasks, with its weights kept after 30, 60, 120 and 240 steps), each kept step
evaluated as a run of its own on the reported questions and on a validation set chosen before looking. On a GPU the
same curve at Llama-3.2-1B's shape is ``--preset llama-3.2-1b-curve --device cuda`` (the same 120-960 tasks in
batches of 16), e.g. ``make experiments-curve CURVE_PRESET=llama-3.2-1b-curve CURVE_RUN=curve-llama DEVICE=cuda``.

Every command resumes (finished work is kept), so the study is several short jobs:

    python -m experiments.learning_curve prepare                 # indexes and augmented files (the demo's + more)
    python -m experiments.learning_curve train --seed 42         # the long run (hours on a 2-core CPU)
    python -m experiments.learning_curve train --seed 43 --stop-after 60     # the second seed: its first two points
    python -m experiments.learning_curve points --run curve      # each kept step as a run: curve-030, ...
    python -m experiments.learning_curve eval --point curve-030  # banks + methods on every evaluated split
    python -m experiments.learning_curve cost --point curve-030  # the meta-trained LoRA's cost to general ability
    python -m experiments.learning_curve report --runs curve,curve-s43 > reference/experiments/learning_curve.md

What is evaluated at each point: the probe's dev questions (60), PopQA's (30) and, chosen before looking, the
transfer split's validation questions (60), with regrad and no_update, and rag_sft (fine-tuned on the same questions
for the same number of examples, :mod:`regrad_lib.training.sft`, at the learning rate the demo's grid chose) at the
points of at most ``--sft-up-to`` steps; rag and closed_book (the base model: the same at every point) once. On a
2-core CPU a point costs 10-40 minutes (rag_sft's training most of it), so the transfer split's dev questions, the
binding probe and regrad_icl/shift are left to the dedicated studies. The meta-trained LoRA's own cost to general
ability at each point: ``cost --point``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

RUN, PRESET = "curve", "smollm2-135m-curve"
TRAIN_DATASETS = ["popqa", "hotpotqa", "probe"]
# (dataset, augmented split, index, questions): the reported questions, then the validation set
SPLITS = [("probe", "dev", "miniwiki", 60), ("popqa", "dev", "miniwiki", 30),
          ("probe_transfer", "validation_all", "miniwiki-transfer", 60)]
VALIDATION = ("probe_transfer", "validation_all")
METHODS = ["regrad", "rag_sft", "no_update"]
# rag_sft trains as many examples as the point's meta-training (about a minute a step on one CPU thread): on the
# CPU it is trained to this many steps only, the later points answer without it (--sft-up-to raises it)
SFT_UP_TO = 60
BASE_METHODS = ["closed_book", "rag"]          # the base model: answered at the first point only


def _prepare(a) -> None:
    from regrad_lib import retrieval
    from regrad_lib.data import indexed_corpus, probe_binding
    from regrad_lib.retrieval import augment

    corpus = "data/sample/psgs_w100.tsv"
    indexes = {"miniwiki": indexed_corpus.prepare(corpus, True),
               "miniwiki-transfer": indexed_corpus.prepare(corpus, True, transfer=True),
               "miniwiki-binding": indexed_corpus.prepare(corpus, True, with_binding=True)}
    opened = {name: retrieval.build(path, name) for name, path in indexes.items()}
    augment.augment_all(TRAIN_DATASETS, "train", retriever=opened["miniwiki"])
    augment.augment_all(["probe", "popqa"], "dev", retriever=opened["miniwiki"], limit=30, limits={"probe": 60})
    augment.augment("probe_transfer", "dev", retriever=opened["miniwiki-transfer"],
                    data_dir="data/sample/probe_transfer", end=60)
    augment.augment("probe_transfer", "validation", retriever=opened["miniwiki-transfer"],
                    data_dir="data/sample/probe_transfer")
    augment.augment("probe_binding", "dev", retriever=opened["miniwiki-binding"], data_dir="data/sample/probe_binding",
                    end=60)
    probe_binding.write_position_free("dev")
    print(json.dumps({"indexes": sorted(indexes), "prepared": True}))


def _train(a) -> None:
    import torch

    from regrad_lib import config
    from regrad_lib.training import train

    torch.set_num_threads(a.threads)
    preset = config.load_preset(a.preset, {"train": {"seed": a.seed}})
    run = a.run if a.seed == 42 else f"{a.run}-s{a.seed}"
    print(json.dumps(train.train(run, preset, TRAIN_DATASETS, device=a.device, stop_after=a.stop_after), default=str))


def _rag_sft_rate(a) -> float:
    """The learning rate the demo's grid chose for rag_sft on the same validation slice (or ``--rate``)."""
    from regrad_lib.io import artifacts, paths

    if a.rate is not None:
        return a.rate
    file = paths.baseline_selection("demo", "rag_sft")
    if not file.is_file():
        raise SystemExit(f"{paths.relative(file)} not found: run make experiments-fair first (the demo's grid chooses "
                         "rag_sft's learning rate), or pass --rate")
    return float(artifacts.read_json(file)["learning_rate"])


def _points(a) -> None:
    from regrad_lib.training import kept_steps

    rate = _rag_sft_rate(a)
    names = [kept_steps.point_run(a.run, s, baselines={"learning_rates": [rate]}) for s in kept_steps.kept_steps(a.run)]
    print(json.dumps({"run": a.run, "points": names, "rag_sft_learning_rate": rate}))


def _eval(a) -> None:
    import torch

    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import evaluate
    from regrad_lib.training import kept_steps

    torch.set_num_threads(a.threads)
    learner = Learner.from_run(a.point, a.device)
    parent = learner_summary(a.point)["kept_step_of"]
    # the base model's answers once per curve: at the main run's first point, not again for another seed's
    first = a.point == kept_steps.point_name(parent, kept_steps.kept_steps(parent)[0]) and \
        not re.search(r"-s\d+$", parent)
    for dataset, split, _, _ in SPLITS:
        encode.encode(a.point, dataset, split, learner=learner)
        step = next(k for k in kept_steps.kept_steps(parent) if kept_steps.point_name(parent, k) == a.point)
        methods = [m for m in METHODS if m != "rag_sft" or step <= a.sft_up_to] + (BASE_METHODS if first else [])
        evaluate.evaluate(a.point, dataset, methods, split=split, learner=learner,
                          evaluation=None if split in ("dev",) else split.replace("_", "-"))
    print(json.dumps({"point": a.point, "evaluated": [f"{d}/{s}" for d, s, _, _ in SPLITS]}))


def learner_summary(point: str) -> dict:
    from regrad_lib.io import artifacts, paths

    return artifacts.read_json(paths.train_summary_file(point))


def _cost(a) -> None:
    import dataclasses

    import torch

    from regrad_lib import config
    from regrad_lib.core.learner import Learner
    from regrad_lib.cpt import drift

    torch.set_num_threads(a.threads)
    learner = Learner.from_run(a.point, a.device)
    # the CPT grid's general set (the first 64 held-out passages and 64 general questions, in file order)
    cfg = config.CptConfig(**{**dataclasses.asdict(learner.preset.cpt), "general_passages": a.general_passages,
                              "general_questions": a.general_questions})
    learner = dataclasses.replace(learner, preset=dataclasses.replace(learner.preset, cpt=cfg))
    general = drift.general_set(a.point, learner, corpus_path="data/sample/psgs_w100.tsv",
                                datasets=["popqa", "hotpotqa"])
    print(json.dumps({"point": a.point, "points": {k: {m: v for m, v in p.items() if not isinstance(v, list)}
                                                     for k, p in general.points.items()}}))


def _report(a) -> None:
    from regrad_lib.reporting import learning_curve
    from regrad_lib.training import kept_steps

    runs = a.runs.split(",")
    base = kept_steps.point_name(runs[0], kept_steps.kept_steps(runs[0])[0])
    table = learning_curve.collect(runs, SPLITS, VALIDATION, base_point=base)
    print(learning_curve.markdown(table))
    if a.figure:
        from regrad_lib.reporting import figure_style, training_plots

        figure_style.save_figure(training_plots.learning_curve(table), a.figure)
    if a.csv:
        learning_curve.write_csv(table, a.csv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--preset", default=PRESET)
    t.add_argument("--run", default=RUN, help="the run's name (another seed: <run>-s<seed>)")
    t.add_argument("--stop-after", type=int, default=None)
    pts = sub.add_parser("points")
    pts.add_argument("--run", default=RUN)
    pts.add_argument("--rate", type=float, default=None)
    for name in ("eval", "cost"):
        e = sub.add_parser(name)
        e.add_argument("--point", required=True)
        if name == "cost":
            e.add_argument("--general-passages", type=int, default=64)
            e.add_argument("--general-questions", type=int, default=64)
        if name == "eval":
            e.add_argument("--sft-up-to", type=int, default=SFT_UP_TO,
                           help="train rag_sft at the points of at most this many meta-training steps")
    r = sub.add_parser("report")
    r.add_argument("--runs", default=f"{RUN},{RUN}-s43", help="the main run first, then other seeds")
    r.add_argument("--figure", default=None)
    r.add_argument("--csv", default=None)
    for s in sub.choices.values():
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--device", default="cpu")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    {"prepare": _prepare, "train": _train, "points": _points, "eval": _eval, "cost": _cost,
     "report": _report}[a.command](a)


if __name__ == "__main__":
    main()
