"""CPT's settings chosen, not typed: a committed grid of learning rate × epochs per chunk for each CPT arm (weights ×
objective), run on a validation stream of the probe's *training* people that meta-training never used (never the
reported dev questions), and the selection rule of :mod:`regrad_lib.cpt.selection` applied to it.

    python -m experiments.cpt_grid run                     # every grid point (resumes: finished points are kept)
    python -m experiments.cpt_grid seeds                   # the chosen settings again with seeds 43 and 44
    python -m experiments.cpt_grid report --write-preset smollm2-135m-instruct    # reference/experiments/cpt_grid*

The validation stream: the first ``--people`` people (two questions each) of the probe's training file none of whose
questions 03_train stepped on or validated on (so the replayed QA examples never hold a validation answer), their
top-3 passages injected as a stream of 4 chunks as the dev stream is (:mod:`regrad_lib.cpt.continual`). Each grid
point is measured once, after the stream's last chunk (its start is the base model, or the meta-trained weights for
``phi``, already measured): answer accuracy and answer NLL of the validation questions closed book (the knowledge
CPT is for), and the drift of its persistent weights on the general set the dev report uses (held-out text NLL,
general questions' answer NLL, acc, F1, EM, ‖Δθ‖). Files: ``results/<run>/evaluations/cptgrid/drift/`` (the general
set), ``results/<run>/evaluations/cptgrid-<label>/probe/cpt/`` (each point's stream), and the committed report
``reference/experiments/cpt_grid.md`` with ``cpt_grid.csv`` (one row per point) and ``cpt_grid/<label>.json`` (each
point's drift file, per-item values rounded).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import time
from pathlib import Path

RUN, DATASET, SPLIT = "demo", "probe", "train_all"
GENERAL_CORPUS, GENERAL_DATASETS = "data/sample/psgs_w100.tsv", ["popqa", "hotpotqa"]
# what every grid point shares: the dev streams' shape (4 chunks, batches of 8) and the general set, of which the
# grid measures the first 64 passages and 64 questions (the dev report's 256 and 200 begin with them: the selection
# is in file order), so a point costs about as much to measure as to train
COMMON = {"chunks": 4, "batch_size": 8}
GENERAL = {"general_passages": 64, "general_questions": 64}
# (weights, objective): the learning rates and epochs per chunk tried. The fresh LoRA with the replayed answer format
# is the CPT the study reports; its choice also sets the raw objective's and the meta-trained LoRA's (the same
# LoRA steps: the arms then differ in the objective or the starting weights only). Full fine-tuning of every weight
# needs rates about ten times lower: its own line of rates at two epochs per chunk.
GRIDS = {("lora", "replay"): ([1e-4, 3e-4, 1e-3, 3e-3], [1, 2, 4]),
         ("full", "replay"): ([1e-5, 3e-5, 1e-4, 3e-4], [2])}
SHARED = {"lora-raw": "lora-replay", "phi-replay": "lora-replay", "phi-raw": "lora-replay",
          "full-raw": "full-replay"}      # arms without a grid of their own: the settings of this arm's choice
# a point costs 13-18 minutes on one CPU thread: the report names every point of GRIDS not measured, and chooses
# among the measured ones (run --only to measure the most informative first)
SEEDS = (43, 44)                       # the chosen settings again (42, the run's seed, is the grid's own)
REFERENCE = Path("reference/experiments")
TIMING = "timing.json"                 # beside a point's stream checkpoint: the seconds its training took


def label(weights: str, objective: str, rate: float, epochs: int, seed: int | None = None) -> str:
    return f"{weights}-{objective}-lr{rate:g}-e{epochs}" + ("" if seed in (None, 42) else f"-s{seed}")


def points(arms=None) -> list[dict]:
    """Every grid point: its arm, label and cpt_config overrides."""
    out = []
    for (weights, objective), (rates, epochs) in GRIDS.items():
        if arms and f"{weights}-{objective}" not in arms:
            continue
        for rate in rates:
            for e in epochs:
                out.append({"arm": f"{weights}-{objective}", "label": label(weights, objective, rate, e),
                            "cpt": {**COMMON, "weights": weights, "objective": objective, "learning_rate": rate,
                                    "epochs_per_chunk": e}})
    return out


def validation_items(run: str, people: int):
    """The validation stream's questions: probe training people none of whose questions meta-training used, in
    file order, both questions of each."""
    from regrad_lib.core import task_batches
    from regrad_lib.cpt import drift
    from regrad_lib.io import artifacts, paths

    taken = {i for d, i in drift.meta_trained(run) if d == DATASET}
    source = artifacts.read_json(paths.resolve("data/sample/probe/train.json"))
    items = task_batches.load(DATASET, SPLIT, 3)
    person = {t.test_id: source[t.test_id]["passage_id"] for t in items}
    used = {person[i] for i in taken if i in person}
    chosen, seen = [], []
    for t in items:
        if person[t.test_id] in used:
            continue
        if person[t.test_id] not in seen:
            if len(seen) == people:
                break
            seen.append(person[t.test_id])
        chosen.append(t)
    return chosen


def _learner(a):
    import torch

    from regrad_lib import config
    from regrad_lib.core.learner import Learner

    torch.set_num_threads(a.threads)
    learner = Learner.from_run(a.run, a.device)
    cfg = config.CptConfig(**{**dataclasses.asdict(learner.preset.cpt), **COMMON, **GENERAL})
    return dataclasses.replace(learner, preset=dataclasses.replace(learner.preset, cpt=cfg))


def _general(a, learner):
    from regrad_lib.cpt import drift

    return drift.general_set(a.run, learner, corpus_path=GENERAL_CORPUS, datasets=GENERAL_DATASETS,
                             evaluation="cptgrid")


def _train(a, learner, general, items, overrides: dict, name: str, seed: int | None = None) -> dict:
    from regrad_lib import config
    from regrad_lib.cpt import continual
    from regrad_lib.io import artifacts, paths

    cfg = config.CptConfig(**{**dataclasses.asdict(learner.preset.cpt), **overrides, "seed": seed})
    current = dataclasses.replace(learner, preset=dataclasses.replace(learner.preset, cpt=cfg))
    folder = paths.cpt_dir(a.run, DATASET, f"cptgrid-{name}")
    timing = folder / TIMING
    start = time.perf_counter()
    post = continual.post_train(a.run, DATASET, current, items, cfg=cfg, general=general, split=SPLIT, topk=3,
                                evaluation=f"cptgrid-{name}", measure_at="end")
    if not timing.is_file():
        artifacts.write_json(timing, {"seconds": round(time.perf_counter() - start, 1)})
    last = post.drift[-1]
    return {"label": name, "seconds": artifacts.read_json(timing)["seconds"], "knowledge_acc": last["knowledge_acc"],
            "knowledge_nll": last["knowledge_nll"], "general_text_nll": last["general_text_nll"],
            "general_nll": last["general_nll"], "delta_rel_trained": last["delta_rel_trained"]}


def _run(a) -> None:
    learner = _learner(a)
    general = _general(a, learner)
    items = validation_items(a.run, a.people)
    print(json.dumps({"validation_questions": len(items), "general_passages": len(general.passages),
                      "general_questions": len(general.questions)}), flush=True)
    only = a.only.split(",") if a.only else None
    todo = points(a.arms.split(",") if a.arms else None)
    if only:
        todo = sorted((p for p in todo if p["label"] in only), key=lambda p: only.index(p["label"]))
    for point in todo:
        print(json.dumps(_train(a, learner, general, items, point["cpt"], point["label"])), flush=True)


def _seeds(a) -> None:
    learner = _learner(a)
    general = _general(a, learner)
    items = validation_items(a.run, a.people)
    for choice in collect(a.run, a.people).choices.values():
        point = next(p for p in points() if p["label"] == choice.point.label)
        for seed in SEEDS:
            print(json.dumps(_train(a, learner, general, items, point["cpt"], f"{choice.point.label}-s{seed}",
                                    seed)), flush=True)


# --- the report (no model) -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Grid:
    general: dict
    rows: list[dict]                     # one per measured point (seed 42) and per extra seed
    ceiling: object
    choices: dict                        # arm -> selection.Choice


def _stream(run: str, name: str) -> dict | None:
    from regrad_lib.io import paths, result_files

    evaluation = f"cptgrid-{name}"
    return result_files.read_drift(run, DATASET, evaluation) if paths.drift_file(run, DATASET, evaluation).is_file() \
        else None


def _row(general: dict, point: dict, name: str, seed: int, saved: dict, run: str) -> dict:
    from regrad_lib.io import artifacts, paths
    from regrad_lib.reporting import effects

    base = general["points"]["base"]
    last = saved["drift"][-1]
    articles = [p["title"] or p["id"] for p in general["passages"]]
    text = effects.clustered_difference(last["general_text_nlls"], base["general_text_nlls"], articles)
    answer = effects.clustered_difference(last["general_answer_nlls"], base["general_answer_nlls"],
                                          list(range(len(base["general_answer_nlls"]))))
    timing = paths.cpt_dir(run, DATASET, f"cptgrid-{name}") / TIMING
    return {"arm": point["arm"], "label": name, "seed": seed, "weights": point["cpt"]["weights"],
            "objective": point["cpt"]["objective"], "learning_rate": point["cpt"]["learning_rate"],
            "epochs_per_chunk": point["cpt"]["epochs_per_chunk"], "steps": last["steps"],
            "knowledge_acc": last["knowledge_acc"], "knowledge_em": last["knowledge_em"],
            "knowledge_f1": last["knowledge_f1"], "knowledge_nll": last["knowledge_nll"],
            "first_block_acc": last["first_block_acc"], "general_text_nll": last["general_text_nll"],
            "text_drift": text.mean, "text_drift_se": text.se, "general_nll": last["general_nll"],
            "answer_drift": answer.mean, "answer_drift_se": answer.se, "general_acc": last["general_acc"],
            "general_f1": last["general_f1"], "general_em": last["general_em"],
            "delta_rel": last["delta_rel"], "delta_rel_trained": last["delta_rel_trained"],
            "train_loss": last["train_loss"], "replay_loss": last.get("replay_loss"),
            "seconds": artifacts.read_json(timing)["seconds"] if timing.is_file() else None}


def collect(run: str, people: int) -> Grid:
    """Every measured grid point (and the chosen settings' other seeds) with its drift from the base model, the
    ceiling and each arm's choice."""
    from regrad_lib.cpt import selection
    from regrad_lib.io import result_files

    general = result_files.read_general_set(run, "cptgrid")
    ceiling = selection.Ceiling.of_regrad(general["points"]["base"], general["points"]["meta"])
    rows, choices = [], {}
    for point in points():
        saved = _stream(run, point["label"])
        if saved is not None:
            rows.append(_row(general, point, point["label"], 42, saved, run))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        grid = [selection.GridPoint(r["label"], r["learning_rate"], r["epochs_per_chunk"], r["knowledge_acc"],
                                    r["knowledge_nll"], r["text_drift"], r["answer_drift"])
                for r in rows if r["arm"] == arm]
        choices[arm] = selection.choose(grid, ceiling)
        point = next(p for p in points() if p["label"] == choices[arm].point.label)
        for seed in SEEDS:
            name = f"{point['label']}-s{seed}"
            saved = _stream(run, name)
            if saved is not None:
                rows.append(_row(general, point, name, seed, saved, run))
    return Grid(general, rows, ceiling, choices)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return f"{mean:.2f} ± {sd:.2f}"


def markdown(grid: Grid, run: str, people: int, items: int | None) -> str:
    base, meta = grid.general["points"]["base"], grid.general["points"]["meta"]
    parts = [f"Run `{run}`; validation stream: {items if items is not None else '?'} probe training questions of "
             f"{people} people meta-training never used, 4 chunks, batches of 8; general set: "
             f"{len(grid.general['passages'])} held-out passages ({grid.general['selection'].get('articles', '?')} "
             f"articles), {len(grid.general['questions'])} general questions "
             f"({grid.general['selection'].get('per_dataset', {})}).", "",
             "The rule (regrad_lib/cpt/selection.py): the most knowledge on the validation stream (answer accuracy "
             "closed book after the last chunk; ties: lower answer NLL, then the lower rate and fewer epochs) among "
             "the settings that drift no more than ReGrad's own persistent weights (the meta-trained LoRA) do against "
             "the base model, per measure, floored at 0: general-text NLL "
             f"{meta['general_text_nll']:.4f} − {base['general_text_nll']:.4f} → ceiling {grid.ceiling.text:.4f} "
             f"nats; general answer NLL {meta['general_nll']:.4f} − {base['general_nll']:.4f} → ceiling "
             f"{grid.ceiling.answer:.4f} nats.", ""]
    header = ["arm", "lr", "epochs", "steps", "acc", "EM", "answer NLL", "text drift ± SE", "answer drift ± SE",
              "general acc", "‖Δθ‖/‖θ_trained‖", "under ceiling", "s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in grid.rows:
        if r["seed"] != 42:
            continue
        chosen = grid.choices.get(r["arm"])
        mark = " **chosen**" if chosen is not None and chosen.point.label == r["label"] else ""
        under = "yes" if r["text_drift"] <= grid.ceiling.text and r["answer_drift"] <= grid.ceiling.answer else "no"
        lines.append("| " + " | ".join([r["arm"] + mark, f"{r['learning_rate']:g}", str(r["epochs_per_chunk"]),
                                        str(r["steps"]), _fmt(r["knowledge_acc"], 1), _fmt(r["knowledge_em"], 1),
                                        _fmt(r["knowledge_nll"]),
                                        f"{r['text_drift']:+.4f} ± {r['text_drift_se']:.4f}",
                                        f"{r['answer_drift']:+.3f} ± {r['answer_drift_se']:.3f}",
                                        _fmt(r["general_acc"], 1), f"{r['delta_rel_trained']:.3g}", under,
                                        _fmt(r["seconds"], 0)]) + " |")
    parts += ["\n".join(lines), "", f"Base model: general acc {base['general_acc']:.1f}, answer NLL "
              f"{base['general_nll']:.3f}, text NLL {base['general_text_nll']:.4f}; meta-trained (ReGrad's "
              f"persistent weights): general acc {meta['general_acc']:.1f}, answer NLL {meta['general_nll']:.3f}, "
              f"text NLL {meta['general_text_nll']:.4f}.", "", "Chosen per arm:", ""]
    for arm, choice in grid.choices.items():
        parts.append(f"- {arm}: {choice.describe(grid.ceiling)}")
        seeds = [r for r in grid.rows if r["arm"] == arm and (r["label"] == choice.point.label or
                                                            r["label"].startswith(choice.point.label + "-s"))]
        if len(seeds) > 1:
            under = sum(r["text_drift"] <= grid.ceiling.text and r["answer_drift"] <= grid.ceiling.answer
                        for r in seeds)
            parts.append(f"  - over seeds {', '.join(str(r['seed']) for r in seeds)}: acc "
                         f"{_spread([r['knowledge_acc'] for r in seeds])}, answer NLL "
                         f"{_spread([r['knowledge_nll'] for r in seeds])}, text drift "
                         f"{_spread([r['text_drift'] for r in seeds])}, answer drift "
                         f"{_spread([r['answer_drift'] for r in seeds])} (mean ± SD); under the ceiling at "
                         f"{under}"
                         f" of {len(seeds)} seeds")
    measured = {r["label"] for r in grid.rows}
    missing = [p["label"] for p in points() if p["label"] not in measured]
    if missing:
        parts += ["", f"Not measured ({len(missing)} of the grid's {len(points())} points; chosen among the measured "
                  f"only): {', '.join(missing)}."]
    total = sum(r["seconds"] or 0 for r in grid.rows)
    parts += ["", f"Compute: {total:.0f} s of streams on this CPU (one thread; the general set's base and meta "
              "measures not included)."]
    return "\n".join(parts) + "\n"


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _report(a) -> None:
    from regrad_lib import config
    from regrad_lib.io import artifacts, paths

    grid = collect(a.run, a.people)
    try:
        items = len(validation_items(a.run, a.people))
    except FileNotFoundError:
        items = None
    out = paths.resolve(str(REFERENCE))
    (out / "cpt_grid").mkdir(parents=True, exist_ok=True)
    for r in grid.rows:
        saved = _stream(a.run, r["label"])
        artifacts.write_json(out / "cpt_grid" / f"{r['label']}.json",
                             _rounded({k: saved[k] for k in ("settings", "drift", "trained_norm", "theta_norm")}))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(grid.rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rounded(r) for r in grid.rows)
    (out / "cpt_grid.csv").write_text(buffer.getvalue(), encoding="utf-8")
    chosen = {arm: {**next(p for p in points() if p["label"] == c.point.label)["cpt"], "label": c.point.label,
                    "under_ceiling": c.admitted} for arm, c in grid.choices.items()}
    for arm, source in SHARED.items():        # arms without a grid: the source arm's steps, their own weights/objective
        if source in chosen:
            weights, objective = arm.split("-")
            chosen[arm] = {**chosen[source], "weights": weights, "objective": objective, "label": f"as {source}"}
    artifacts.write_json(out / "cpt_grid" / "chosen.json", {"ceiling": dataclasses.asdict(grid.ceiling),
                                                           "chosen": chosen})
    (out / "cpt_grid.md").write_text(markdown(grid, a.run, a.people, items), encoding="utf-8")
    if a.write_preset:
        file = paths.preset_dir(a.write_preset) / config.OPTIONAL_FILES["cpt"]
        current = artifacts.read_json(file)
        main = chosen["lora-replay"]
        artifacts.write_json(file, {**current, **{k: main[k] for k in ("learning_rate", "epochs_per_chunk", "chunks",
                                                                       "batch_size", "weights", "objective")}})
    print(json.dumps({"points": len(grid.rows), "chosen": chosen}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arms", default=None, help="comma-separated arms (weights-objective); default: every arm")
    r.add_argument("--only", default=None, help="comma-separated point labels, measured in this order")
    sub.add_parser("seeds")
    rep = sub.add_parser("report")
    rep.add_argument("--write-preset", default=None, help="write the lora-replay choice into this preset's cpt_config")
    for s in sub.choices.values():
        s.add_argument("--run", default=RUN)
        s.add_argument("--people", type=int, default=16)
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--device", default="cpu")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    {"run": _run, "seeds": _seeds, "report": _report}[a.command](a)


if __name__ == "__main__":
    main()
