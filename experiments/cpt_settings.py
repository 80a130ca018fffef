"""Try continual post-training settings by hand on validation data: the probe's *training* people (never the dev
questions that are reported). The committed grid, its selection rule and the chosen settings are
``python -m experiments.cpt_grid`` (make experiments-cpt-grid); this script is for a quick look at other settings.
Each setting injects the top-k passages of the first ``--limit`` probe training questions as a stream of chunks
(regrad_lib.cpt.continual, the same code as the cpt method) and prints, after the last chunk, the closed-book answer
accuracy and answer NLL on those questions (the knowledge CPT is for), the accuracy of the first chunk's questions
(what it kept), and the drift of its persistent weights (held-out text NLL, general questions' answer NLL and
accuracy, ||dtheta|| relative to every weight and to the trained modules').

    .venv/bin/python -m experiments.cpt_settings --run demo --grid '[{"learning_rate": 1e-3, "objective": "replay"}]'

Needs a trained run (its base model is what CPT trains; ``weights`` "phi" also its LoRA) and the augmented probe
training file of that work root (02_augment). Results go to ``results/<run>/evaluations/cptsel-<i>/probe/cpt/``
(the general set once, in ``results/<run>/evaluations/cptsel/drift/``); a finished setting is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo")
    p.add_argument("--grid", required=True, help="JSON list of cpt_config overrides, one setting each")
    p.add_argument("--dataset", default="probe")
    p.add_argument("--split", default="train_all", help="an augmented training file: never the reported dev file")
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--general-corpus", default="data/sample/psgs_w100.tsv")
    p.add_argument("--general-datasets", default="popqa,hotpotqa")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.split == "dev":
        raise SystemExit("--split dev: settings are never chosen on the reported dev questions")

    import torch

    from regrad_lib import config
    from regrad_lib.core import task_batches
    from regrad_lib.core.learner import Learner
    from regrad_lib.cpt import continual, drift

    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    learner = Learner.from_run(a.run)
    items = task_batches.load(a.dataset, a.split, a.topk, end=a.limit)
    general = drift.general_set(a.run, learner, corpus_path=a.general_corpus,
                                datasets=a.general_datasets.split(","), evaluation="cptsel")
    print(json.dumps({"general_passages": len(general.passages), "general_questions": len(general.questions),
                      "base": {k: v for k, v in general.points["base"].items() if not isinstance(v, list)}}))
    for i, overrides in enumerate(json.loads(a.grid)):
        cfg = config.CptConfig(**{**dataclasses.asdict(learner.preset.cpt), **overrides})
        current = dataclasses.replace(learner, preset=dataclasses.replace(learner.preset, cpt=cfg))
        start = time.perf_counter()
        post = continual.post_train(a.run, a.dataset, current, items, cfg=cfg, general=general, split=a.split,
                                    topk=a.topk, limit=a.limit, evaluation=f"cptsel-{i}", measure_at="end")
        last, start_row = post.drift[-1], post.drift[0]
        print(json.dumps({"setting": overrides, "seconds": round(time.perf_counter() - start),
                          "knowledge_acc": last["knowledge_acc"], "knowledge_nll": last["knowledge_nll"],
                          "first_block_acc": last["first_block_acc"],
                          "general_text_nll": [round(r["general_text_nll"], 4) for r in (start_row, last)],
                          "general_nll": [round(r["general_nll"], 4) for r in (start_row, last)],
                          "general_acc": [r["general_acc"] for r in (start_row, last)],
                          "delta_rel": round(last["delta_rel"], 6),
                          "delta_rel_trained": round(last["delta_rel_trained"], 6),
                          "train_loss": last["train_loss"], "replay_loss": last["replay_loss"]}), flush=True)


if __name__ == "__main__":
    main()
