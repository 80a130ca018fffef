"""The transfer frontier: meta-train a variant of a preset, then measure it on the transfer split's *validation*
questions (never the dev questions 05/06 report; PopQA rows 300–499 are never read) — training time, the
validation meta loss, and regrad / shift / no_update EM and answer NLL out of template, with a gamma sweep.

Every phase resumes and fits in a short job, so a long study is several locked jobs:

    REGRAD_WORK=$PWD/.work OMP_NUM_THREADS=1 flock /tmp/regrad-heavy.lock timeout 590 \
        .venv/bin/python bench/transfer_frontier.py train --run tf-alr3 --train '{"alpha_learning_rate": 3.0}'
    ... eval --run tf-alr3 [--gammas 0.5,2,4] [--methods regrad,shift,no_update,rag]
    ... report --run demo --run tf-alr3          # one JSON line per run (no model loaded)

``paraphrase`` writes the template-diversity variant's training questions (dataset ``probe_para``: the probe's
training questions, each with one of three templates; then ``train --train-datasets popqa,hotpotqa,probe_para``).
``train`` meta-trains ``outputs/<run>/`` (resuming its checkpoint after a killed job; ``--save-steps`` keeps the loss
of a kill small; a finished run is kept). ``eval`` encodes the validation questions' passages into the run's bank
and answers them (``results/<run>/evaluations/transfer-validation/``). It needs the transfer index and the
validation questions' augmented file of that work root:

    python -m regrad_lib.pipeline --run demo --steps 01-02 --datasets probe_transfer -p index miniwiki-transfer \
        -p transfer true -p train_datasets '[]'
    python -c "from regrad_lib import augment, retrieval; augment.augment('probe_transfer', 'validation', \
        retriever=retrieval.open('miniwiki-transfer'), data_dir='data/sample/probe_transfer')"
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    from regrad_lib import config, train

    overrides = {"save_steps": a.save_steps, **json.loads(a.train)}
    preset = config.load_preset(a.preset, {"train": overrides, "learner": json.loads(a.learner)})
    summary = train.train(a.run, preset, a.train_datasets.split(","), limit=a.max_train_tasks)
    print(json.dumps({"run": a.run, "steps": summary["steps"], "tasks": summary["tasks"],
                      "best_eval": summary["best_eval"]}))


def _paraphrase(a) -> None:
    """``probe_para``: the probe's training questions, each asked with one of three templates (the original and
    two of :data:`PARAPHRASES`, seeded), augmented from the demo index like the probe's."""
    import random

    from regrad_lib import artifacts, augment, paths, probe_transfer, retrieval

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


def _eval(a) -> None:
    from regrad_lib import encode, evaluate, sweeps
    from regrad_lib.learner import Learner

    learner = Learner.from_run(a.run)
    encode.encode_all(encode.EncodeSettings(run=a.run, datasets=[DATASET], split=SPLIT), learner)
    common = dict(split=SPLIT, learner=learner, evaluation=EVALUATION)
    evaluate.evaluate_all(a.run, [DATASET], a.methods.split(","), **common)
    gammas = [float(g) for g in a.gammas.split(",") if g.strip()]
    if gammas:
        sweeps.sweep_all(a.run, [DATASET], gammas=gammas, topks=[3], **common)


def _report(a) -> None:
    from regrad_lib import analysis, artifacts, effects, metrics, paths, transfer

    records = artifacts.read_json(paths.sample_dir() / DATASET / "validation.json")
    for run in a.run:
        out: dict = {"run": run}
        summary = artifacts.read_json(paths.output_dir(run) / "train_summary.json")
        out.update({k: summary.get(k) for k in ("steps", "tasks", "wall_s", "best_eval")})
        for method in ("regrad", "shift", "no_update", "rag"):
            try:
                rows = analysis.read_predictions(run, DATASET, method, EVALUATION)
            except FileNotFoundError:
                continue
            em = [metrics.score(r["prediction"], r["answers"])["em"] for r in rows]
            nll = [r["answer_nll"] for r in rows]
            kinds = [records[int(r["test_id"])]["answer_type"] for r in rows]
            out[method] = {"em": round(100 * sum(em) / len(em), 1), "nll": round(sum(nll) / len(nll), 3),
                           **{f"em_{k}": round(100 * sum(e for e, t in zip(em, kinds) if t == k)
                                               / max(1, kinds.count(k)), 1) for k in ("closed", "invented")}}
            if method == "regrad":
                echoes = [transfer.echo_kind(r["prediction"], records[int(r["test_id"])]["entity"], r["answers"])
                          for r in rows]
                out[method]["own_name_share"] = round(echoes.count("name") / len(echoes), 3)
                out[method]["fragment_share"] = round(echoes.count("fragment") / len(echoes), 3)
        try:
            d = effects.paired_nll_differences(run, DATASET, "regrad", "shift", EVALUATION)
            out["regrad_minus_shift_nll"] = f"{d.mean:+.3f} ± {d.se:.3f} ({d.n_lower}/{d.n})"
        except (FileNotFoundError, ValueError):
            pass
        try:
            sweep = [s for s in analysis.read_sweeps(run, EVALUATION) if s.dataset == DATASET]
            out["gamma_sweep"] = {f"{s.gamma:g}": {"em": round(s.em, 1), "nll": round(s.nll, 3)} for s in sweep}
        except FileNotFoundError:
            pass
        print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("paraphrase", "train", "eval", "report"))
    p.add_argument("--run", required=True, action="append", help="run name (report: several)")
    p.add_argument("--preset", default="smollm2-135m-instruct")
    p.add_argument("--train", default="{}", help="train_args overrides (JSON object)")
    p.add_argument("--learner", default="{}", help="learner_config overrides (JSON object)")
    p.add_argument("--train-datasets", default="popqa,hotpotqa,probe")
    p.add_argument("--max-train-tasks", type=int, default=None)
    p.add_argument("--save-steps", type=int, default=5, help="checkpoint every N steps (a killed job resumes)")
    p.add_argument("--methods", default="regrad,shift,no_update")
    p.add_argument("--gammas", default="", help="gamma sweep on the validation questions, e.g. 0.5,2,4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42, help="paraphrase: which template each question gets")
    p.add_argument("--index", default="miniwiki", help="paraphrase: the demo index (no transfer passages)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.phase in ("train", "eval"):
        import torch

        torch.set_num_threads(a.threads)
        a.run = a.run[0]
    {"paraphrase": _paraphrase, "train": _train, "eval": _eval, "report": _report}[a.phase](a)


if __name__ == "__main__":
    main()
