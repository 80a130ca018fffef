"""How gamma should follow top-k: regrad's answer NLL and EM on a grid of top-k x gamma, and the size of the update
``‖γ·α ⊙ Σ_d g_d‖`` the bank's sum gives at each k (the bank sums top-k gradients, so the update grows with k).

    REGRAD_WORK=... .venv/bin/python -m experiments.topk_gamma --run demo --datasets probe,popqa --split train_60 \\
        --topks 1,2,3,5 --gammas 0.5,1,1.5,2,3 [--limit 60] [--evaluation topk-gamma]

Needs the run (03_train), the augmented split with at least max(topks) passages (02_augment ``topk``) and a bank of
that top-K (04_encode ``topk``, same split); smaller k read it too. Measure on training questions (``train_<n>``:
the probe's training people), never on the dev questions that are reported. Rows go to the named evaluation's
sweeps.csv (``results/<run>/evaluations/<evaluation>/``); the table printed: per dataset and k, the mean update
norm (relative to k = 1), the answer NLL and EM at each gamma, the gamma of the lowest NLL and that gamma times k.
"""

from __future__ import annotations

import argparse
import json
import time

from regrad_lib.evaluation import sweeps


def update_norms(learner, store, items, topk: int) -> float:
    """Mean over questions of ‖α ⊙ Σ_{d in top k} g_d‖ (the update at γ = 1), all LoRA tensors together."""
    import torch

    sums = store.sum_many([list(t.passage_ids[:topk]) for t in items], learner.device)
    total = torch.zeros(len(items))
    for name, grad in sums.items():
        total += (learner.alpha[name].detach().float().cpu() * grad.cpu()).flatten(1).pow(2).sum(1)
    return float(total.sqrt().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--datasets", default="probe,popqa")
    p.add_argument("--split", default="train_60", help="augmented file and bank split (training questions)")
    p.add_argument("--topks", default="1,2,3,5")
    p.add_argument("--gammas", default="0.5,1,1.5,2,3")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--scheme", default="int4")
    p.add_argument("--evaluation", default="topk-gamma")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    from regrad_lib.bank import reader
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import evaluate

    torch.set_num_threads(a.threads)
    topks, gammas = [int(k) for k in a.topks.split(",")], [float(g) for g in a.gammas.split(",")]
    learner = Learner.from_run(a.run)
    started = time.perf_counter()
    rows = sweeps.sweep_all(a.run, a.datasets.split(","), gammas=gammas, topks=topks, split=a.split, limit=a.limit,
                            learner=learner, evaluation=a.evaluation, scheme=a.scheme)
    print(json.dumps({"sweep_seconds": round(time.perf_counter() - started), "points": len(rows)}))
    for dataset in a.datasets.split(","):
        top = max(topks)
        with reader.open_bank(reader.serving_topk(top, a.run, dataset, a.split, a.scheme), a.run, dataset, a.split,
                            a.scheme, learner=learner) as store:
            items = evaluate.load_tasks(dataset, a.split, top, a.limit)
            norms = {k: update_norms(learner, store, items, k) for k in topks}
        print(f"\n{dataset} ({a.split}, n={len(items)}): answer NLL / EM of regrad at each gamma")
        print(f"{'k':>3} {'norm':>7} {'x k=1':>6} " + " ".join(f"{'γ=' + format(g, 'g'):>13}" for g in gammas)
              + "   best γ (NLL)  γ·k")
        for k in topks:
            cells = {r["gamma"]: r for r in rows if r["dataset"] == dataset and r["topk"] == k and r["mixed"] == 0.0}
            best = min(cells.values(), key=lambda r: r["nll"])["gamma"]
            print(f"{k:>3} {norms[k]:7.3f} {norms[k] / norms[topks[0]]:6.2f} "
                  + " ".join(f"{cells[g]['nll']:6.3f} {cells[g]['em']:5.1f} " for g in gammas)
                  + f"   {best:12g}  {best * k:4g}")


if __name__ == "__main__":
    main()
