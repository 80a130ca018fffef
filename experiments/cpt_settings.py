"""Choose continual post-training's settings on validation data: the probe's *training* people (never the dev
questions that are reported). Each setting injects the top-k passages of the first ``--limit`` probe training questions
as a stream of chunks (regrad_lib.cpt.continual, the same code as the cpt method) and prints, after the last chunk, the
closed-book EM on those questions (the knowledge CPT is for), the EM of the first chunk's questions (what it kept), and
the drift of its persistent weights (held-out text NLL, general questions, ||dtheta||/||theta||).

    .venv/bin/python -m experiments.cpt_settings --run demo --grid '[{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]'

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
                                    topk=a.topk, limit=a.limit, evaluation=f"cptsel-{i}")
        last = post.drift[-1]
        print(json.dumps({"setting": overrides, "seconds": round(time.perf_counter() - start),
                          "knowledge_em": last["knowledge_em"], "first_block_em": last["first_block_em"],
                          "latest_block_em_per_chunk": [r["latest_block_em"] for r in post.drift[1:]],
                          "general_text_nll": [round(r["general_text_nll"], 4) for r in post.drift],
                          "general_em": [r["general_em"] for r in post.drift],
                          "delta_rel": [round(r["delta_rel"], 5) for r in post.drift],
                          "train_loss": [r["train_loss"] for r in post.drift]}), flush=True)


if __name__ == "__main__":
    main()
