"""One training setting measured end to end: meta-train a run with overrides of a preset, bank the dev passages,
answer with regrad / shift / no_update, print the paired effects (and optionally a gamma sweep).

    REGRAD_WORK=/tmp/exp .venv/bin/python -m experiments.probe_experiment --run alr1 \
        --train '{"alpha_learning_rate": 1.0, "max_steps": 40, "eval_steps": 20, "save_steps": 20}' [--gammas 0.5,2]

Needs the index and augmented files of that work root (01_index with ``probe = True`` and 02_augment, e.g.
``python -m regrad_lib.runner.pipeline --run exp --preset smollm2-135m-instruct --steps 01-02``). Choose settings on the
validation meta loss the run logs (``training_log.jsonl``, ``kind = eval``), never on these dev numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from regrad_lib.evaluation import results, sweeps
from regrad_lib.io import result_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--preset", default="smollm2-135m-instruct")
    p.add_argument("--train", default="{}", help="train_args overrides (JSON object)")
    p.add_argument("--learner", default="{}", help="learner_config overrides (JSON object)")
    p.add_argument("--train-datasets", default="popqa,hotpotqa,probe")
    p.add_argument("--datasets", default="probe", help="evaluated datasets (dev split)")
    p.add_argument("--methods", default="regrad,shift,no_update")
    p.add_argument("--limit", type=int, default=None, help="first dev questions per dataset (default: all)")
    p.add_argument("--gammas", default="", help="gamma sweep, e.g. 0.5,2,4 (default: none)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    from regrad_lib import config
    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import evaluate
    from regrad_lib.reporting import effects
    from regrad_lib.training import train

    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    preset = config.load_preset(a.preset, {"train": json.loads(a.train), "learner": json.loads(a.learner)})
    start = time.perf_counter()
    summary = train.train(a.run, preset, a.train_datasets.split(","))
    print(json.dumps({"train_seconds": round(time.perf_counter() - start), "steps": summary["steps"],
                      "tasks": summary["tasks"], "best_eval": summary["best_eval"]}))
    learner = Learner.from_run(a.run)
    datasets = a.datasets.split(",")
    start = time.perf_counter()
    encode.encode_all(encode.EncodeSettings(run=a.run, datasets=datasets, limit=a.limit), learner)
    print(json.dumps({"encode_seconds": round(time.perf_counter() - start)}))
    start = time.perf_counter()
    rows = evaluate.evaluate_all(a.run, datasets, a.methods.split(","), limit=a.limit, learner=learner)
    print(json.dumps({"evaluate_seconds": round(time.perf_counter() - start)}))
    print(results.table(rows))
    table = effects.effect_table(a.run, datasets)
    print(table)
    print(effects.verdict(table))
    if "probe" in datasets:
        print(effects.probe_relations(a.run, datasets))
    if a.gammas:
        sweep = sweeps.sweep_all(a.run, datasets, gammas=[float(g) for g in a.gammas.split(",")], limit=a.limit,
                                 learner=learner)
        print(results.table(sweep, result_files.SWEEP_FIELDS))


if __name__ == "__main__":
    main()
