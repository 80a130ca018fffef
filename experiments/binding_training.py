"""Updates that bind facts to the entity asked: the demo preset meta-trained with distractor passages, measured on
the binding probe's dev families (never trained on) beside the probe and PopQA.

Variants (each the demo preset with the changes named; ``--seed`` gives a second seed):

- ``bind``: the binding probe's *training* families (180 questions: three members of 60 families, each question's
  top-3 = its family) among the meta-training tasks;
- ``bind-mix``: ``bind`` and half of the probe's and PopQA's training tasks with a distractor (another training
  question's passage of the same relation, another value) as their last passage (train args ``distractor_share``);
- ``bind-mix60``: ``bind-mix`` meta-trained 60 steps (twice the demo's tasks).

Every command resumes (finished work is kept); they run in a work root prepared by ``experiments.learning_curve
prepare`` (the demo's index and files plus the transfer split's and the binding probe's):

    python -m experiments.binding_training prepare python -m experiments.binding_training train --variant bind-mix
    [--seed 43] python -m experiments.binding_training eval --run bind-mix           # also --run demo, today's preset
    python -m experiments.binding_training report --runs demo,bind,bind-mix,... >
    reference/experiments/binding_training.md
"""

from __future__ import annotations

import argparse
import json
import logging

BASE_TRAIN = ["popqa", "hotpotqa", "probe"]
VARIANTS = {
    "bind": ({}, ["probe_binding"]),
    "bind-mix": ({"distractor_share": 0.5, "distractor_datasets": ["probe", "popqa"]}, ["probe_binding"]),
    "bind-mix60": ({"distractor_share": 0.5, "distractor_datasets": ["probe", "popqa"], "max_steps": 60},
                   ["probe_binding"]),
}
# (dataset, augmented split): the binding probe in the position-free order (and ranked), the probe and PopQA (what
# the variant costs injection elsewhere); the transfer split and regrad_icl are left out on a 2-core CPU (a variant's
# evaluation then costs about 20 minutes of one thread)
SPLITS = [("probe_binding", "dev_position_free"), ("probe_binding", "dev"), ("probe", "dev"), ("popqa", "dev")]
METHODS = {"probe_binding": ["regrad", "shift", "no_update", "rag"], "probe": ["regrad", "shift", "no_update"],
           "popqa": ["regrad", "shift", "no_update"]}


def _evaluation(split: str) -> str | None:
    return None if split == "dev" else split.replace("_", "-")


def run_name(variant: str, seed: int) -> str:
    return variant if seed == 42 else f"{variant}-s{seed}"


def _prepare(a) -> None:
    from regrad_lib import retrieval
    from regrad_lib.retrieval import augment

    augment.augment("probe_binding", "train", retriever=retrieval.open("miniwiki-binding"),
                    data_dir="data/sample/probe_binding")
    print(json.dumps({"prepared": "data/augmented/probe_binding/train_all.json"}))


def _train(a) -> None:
    import torch

    from regrad_lib import config
    from regrad_lib.training import train

    torch.set_num_threads(a.threads)
    changes, extra = VARIANTS[a.variant]
    preset = config.load_preset("smollm2-135m-instruct", {"train": {**changes, "seed": a.seed}})
    summary = train.train(run_name(a.variant, a.seed), preset, BASE_TRAIN + extra)
    print(json.dumps({k: summary.get(k) for k in ("run", "steps", "tasks", "train_tasks", "best_eval")}, default=str))


def _eval(a) -> None:
    import torch

    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import binding_matrix, evaluate

    torch.set_num_threads(a.threads)
    learner = Learner.from_run(a.run)
    for dataset, split in SPLITS:
        encode.encode(a.run, dataset, split, learner=learner)
        evaluate.evaluate(a.run, dataset, METHODS[dataset], split=split, learner=learner,
                          evaluation=_evaluation(split))
    binding_matrix.write(a.run, learner, split="dev_position_free", evaluation=_evaluation("dev_position_free"))
    print(json.dumps({"run": a.run, "evaluated": [f"{d}/{s}" for d, s in SPLITS]}))


def _report(a) -> None:
    from regrad_lib.reporting import binding_training

    print(binding_training.markdown(a.runs.split(","), SPLITS, reference=a.reference))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    t.add_argument("--seed", type=int, default=42)
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    r = sub.add_parser("report")
    r.add_argument("--runs", required=True, help="comma-separated runs, the first the reference (e.g. demo)")
    r.add_argument("--reference", default="demo")
    for s in sub.choices.values():
        s.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    {"prepare": _prepare, "train": _train, "eval": _eval, "report": _report}[a.command](a)


if __name__ == "__main__":
    main()
