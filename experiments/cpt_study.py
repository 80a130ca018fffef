"""ReGrad against continual post-training at its best, on the reported questions (the probe's and PopQA's dev
questions of the demo run): the CPT arms at the settings the grid chose (``reference/experiments/cpt_grid/chosen.json``,
written by ``python -m experiments.cpt_grid report``), with the seeds and the one-chunk upper bound, beside
closed_book, rag, rag_sft, regrad, regrad_icl, shift and no_update; the drift of every set of persistent weights on
one general set; the frontier and its verdict.

    python -m experiments.cpt_study run                  # resumes: finished methods and streams are kept
    python -m experiments.cpt_study report               # reference/experiments/cpt.md and its files

What runs (05_evaluate's code, :func:`regrad_lib.evaluation.evaluate.evaluate`):

- the named evaluation ``cpt``: every method above with CPT's main arm (a fresh LoRA with the replayed answer format,
  the grid's choice, seed 42), its drift measured after the stream on the general set (64 held-out passages of
  distinct articles, 64 general questions, as the grid's; ``--measure every`` after every chunk); rag_sft's weights
  are measured on the same general set;
- the arms, each an evaluation ``cpt-<arm>`` beside it on the same general set (copied), cpt and cpt_rag only, drift
  measured after the stream's last chunk: the main arm with seeds 43 and 44, the raw objective, the meta-trained LoRA
  (both objectives), full fine-tuning (both objectives) and the main arm in one chunk (all documents at once: the
  upper bound a stream approaches).

The report: ``reference/experiments/cpt.md`` (tables and verdicts, rendered into README), ``cpt_frontier.png`` and
``cpt_frontier.csv`` (the frontier), ``cpt_predictions.csv`` (every reported setting's per-question rows: the
prediction, acc, EM, F1 and answer NLL).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path

RUN, EVALUATION = "demo", "cpt"
DATASETS = ["probe", "popqa"]
METHODS = ["closed_book", "rag", "rag_sft", "regrad", "regrad_icl", "shift", "no_update", "cpt", "cpt_rag"]
FIXED_FIRST = ["closed_book", "rag", "rag_sft"]      # answered before CPT's settings are chosen
# the grid's general set (its first 64 held-out passages and 64 general questions: the selection is in file order)
# measured once, after the stream: on a 2-core CPU a measurement of 256 passages and 200 questions after every chunk
# cost more than the rest of the study; --general-passages/--general-questions/--measure every restore it on a GPU
GENERAL = {"general_passages": 64, "general_questions": 64}
MEASURE = "end"
GENERAL_CORPUS, GENERAL_DATASETS = "data/sample/psgs_w100.tsv", ["popqa", "hotpotqa"]
CHOSEN = Path("reference/experiments/cpt_grid/chosen.json")
REFERENCE = Path("reference/experiments")
MAIN = "lora-replay"
SEEDS = (43, 44)
STEP_KEYS = ("learning_rate", "epochs_per_chunk", "chunks", "batch_size", "weights", "objective")
TIMING = "timing.json"       # beside a stream's checkpoint: the seconds this study's evaluation of it took


def arms(chosen: dict, datasets: list[str], general: dict | None = None, measure: str = MEASURE) -> list[dict]:
    """Every CPT setting the study reports: (evaluation, cpt overrides, datasets). The main arm is the evaluation
    ``cpt`` itself."""
    def settings(arm: str, **extra) -> dict:
        return {**{k: chosen[arm][k] for k in STEP_KEYS}, **(general or GENERAL), **extra}
    out = [{"evaluation": EVALUATION, "cpt": settings(MAIN, seed=None), "datasets": datasets, "measure": measure}]
    out += [{"evaluation": f"{EVALUATION}-{MAIN}-s{s}", "cpt": settings(MAIN, seed=s), "datasets": datasets,
             "measure": "end"} for s in SEEDS]
    out.append({"evaluation": f"{EVALUATION}-{MAIN}-c1", "cpt": settings(MAIN, seed=None, chunks=1),
                "datasets": datasets, "measure": "end"})
    out += [{"evaluation": f"{EVALUATION}-{arm}", "cpt": settings(arm, seed=None), "datasets": datasets[:1],
             "measure": "end"} for arm in chosen if arm != MAIN]
    return out


def chosen_settings() -> dict:
    """The arms' settings the grid chose (``chosen.json``)."""
    from regrad_lib.io import artifacts, paths

    file = paths.resolve(str(CHOSEN))
    if not file.is_file():
        raise FileNotFoundError(f"{CHOSEN} not found: it is written by `python -m experiments.cpt_grid report` "
                                "(make experiments-cpt-grid)")
    return artifacts.read_json(file)["chosen"]


def _share_general(run: str, evaluation: str) -> None:
    """The arm measures on the main evaluation's general set: a copy of its file (kept as is: same settings)."""
    from regrad_lib.io import paths

    source, target = paths.general_set_file(run, EVALUATION), paths.general_set_file(run, evaluation)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _evaluate(*args, **kwargs) -> dict:
    """05_evaluate's evaluate, waiting while another writer holds the run (one writer a run at a time)."""
    from regrad_lib.evaluation import evaluate
    from regrad_lib.io.runlock import RunBusyError

    while True:
        try:
            return evaluate.evaluate(*args, **kwargs)
        except RunBusyError as e:
            logging.getLogger(__name__).warning("%s; waiting", str(e).split(":")[0])
            time.sleep(120)


def _general(a) -> dict:
    return {"general_passages": a.general_passages, "general_questions": a.general_questions}


def _fixed(a, learner) -> None:
    """What the CPT arms do not depend on: the general set of evaluation ``cpt`` (with the base and meta-trained
    weights' measures), the methods that never update the weights per question (ReGrad's are answered with cpt, whose
    evaluation checks their persistent weights bit for bit) and rag_sft's weights on the general set."""
    from regrad_lib import config
    from regrad_lib.cpt import drift
    from regrad_lib.training import sft

    cfg = config.CptConfig(**{**dataclasses.asdict(learner.preset.cpt), **_general(a)})
    measured = dataclasses.replace(learner, preset=dataclasses.replace(learner.preset, cpt=cfg))
    general = drift.general_set(a.run, measured, corpus_path=GENERAL_CORPUS, datasets=GENERAL_DATASETS,
                                evaluation=EVALUATION)
    for dataset in a.datasets.split(","):
        out = _evaluate(a.run, dataset, FIXED_FIRST, learner=learner, evaluation=EVALUATION)
        print(json.dumps({"evaluation": EVALUATION, "dataset": dataset,
                          **{m: {k: o.get(k) for k in ("acc", "em", "nll", "status")} for m, o in out.items()}}),
              flush=True)
    tuned, _ = sft.learner_for(a.run, "rag_sft", learner)
    drift.add_point(a.run, general, "rag_sft", tuned, EVALUATION)


def _run(a) -> None:
    import torch

    from regrad_lib.core.learner import Learner
    from regrad_lib.io import artifacts, paths

    torch.set_num_threads(a.threads)
    learner = Learner.from_run(a.run, a.device)
    _fixed(a, learner)
    if a.fixed_only:
        return
    datasets = a.datasets.split(",")
    plan = arms(chosen_settings(), datasets, _general(a), a.measure)
    if a.only:
        plan = [p for p in plan if p["evaluation"] in a.only.split(",")]
    for arm in plan:
        methods = METHODS if arm["evaluation"] == EVALUATION else ["cpt", "cpt_rag"]
        if arm["evaluation"] != EVALUATION:
            _share_general(a.run, arm["evaluation"])
        for dataset in arm["datasets"]:
            timing = paths.cpt_dir(a.run, dataset, arm["evaluation"]) / TIMING
            start = time.perf_counter()
            out = _evaluate(a.run, dataset, methods, learner=learner, evaluation=arm["evaluation"],
                                    cpt=arm["cpt"], general_corpus=GENERAL_CORPUS, general_datasets=GENERAL_DATASETS,
                                    cpt_measure=arm["measure"])
            if not timing.is_file() and any(o.get("status") == "computed" for o in out.values()):
                artifacts.write_json(timing, {"seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps({"evaluation": arm["evaluation"], "dataset": dataset,
                              **{m: {k: o.get(k) for k in ("acc", "em", "nll", "status")} for m, o in out.items()}}),
                  flush=True)


# --- the report (no model) -------------------------------------------------------------------------------------

def _rows(run: str, dataset: str, method: str, evaluation: str) -> list[dict]:
    from regrad_lib.io import paths, result_files

    return result_files.method_predictions(run, dataset, method, evaluation) if \
        paths.predictions_file(run, dataset, method, evaluation).is_file() else []


def predictions_csv(run: str, plan: list[dict]) -> str:
    """Every reported setting's per-question rows (compact): where, which question, the answer and its scores."""
    from regrad_lib.data import metrics

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["evaluation", "dataset", "method", "test_id", "prediction", "acc", "em", "f1", "answer_nll"])
    for arm in plan:
        methods = METHODS if arm["evaluation"] == EVALUATION else ["cpt", "cpt_rag"]
        for dataset in arm["datasets"]:
            for method in methods:
                for r in _rows(run, dataset, method, arm["evaluation"]):
                    s = metrics.score_kind(r["prediction"], r["answers"], r.get("answer_kind", "short"),
                                           r.get("choices", ()))
                    nll = r.get("answer_nll")
                    writer.writerow([arm["evaluation"], dataset, method, r["test_id"], r["prediction"],
                                     int(s["acc"]), int(s["em"]), round(s["f1"], 4),
                                     "" if not isinstance(nll, (int, float)) or not math.isfinite(nll) else
                                     round(nll, 4)])
    return buffer.getvalue()


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return f"{mean:.2f} ± {sd:.2f}"


def seeds_table(frontier, datasets: list[str]) -> str:
    """The main arm's whole-stream points over its seeds: mean ± SD of knowledge and drift."""
    lines = ["| dataset | method | seeds | knowledge acc | knowledge answer NLL | Δ text NLL | Δ general answer NLL |",
             "|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for method in ("cpt", "cpt_rag"):
            found = [p for p in frontier if p.dataset == dataset and p.method == method and p.final and
                     p.setting.startswith(MAIN) and "one chunk" not in p.setting]
            if len(found) < 2:
                continue
            lines.append(f"| {dataset} | {method} | {len(found)} | {_spread([p.knowledge_acc for p in found])} | "
                         f"{_spread([p.knowledge_nll for p in found])} | {_spread([p.text.mean for p in found])} | "
                         f"{_spread([p.answer.mean for p in found if p.answer is not None])} |")
    return "\n".join(lines)


def markdown(run: str, datasets: list[str], plan: list[dict]) -> tuple[str, object]:
    from regrad_lib.io import artifacts, paths, result_files
    from regrad_lib.io.run_state import trained_revision
    from regrad_lib.reporting import analysis, cpt_frontier, drift_report

    revision = trained_revision(run)
    parts = [f"Run `{run}`, trained at commit {revision[:7] if revision else '(not recorded)'}; CPT's settings from "
             f"the grid (`reference/experiments/cpt_grid.md`).", ""]
    for arm in plan:
        for dataset in arm["datasets"]:
            if paths.drift_file(run, dataset, arm["evaluation"]).is_file():
                timing = paths.cpt_dir(run, dataset, arm["evaluation"]) / TIMING
                seconds = f", {artifacts.read_json(timing)['seconds']:.0f} s" if timing.is_file() else ""
                stream = result_files.read_drift(run, dataset, arm["evaluation"])
                parts.append(f"- `{arm['evaluation']}` on {dataset}: {stream['settings']['cpt']}"
                             f" (drift measured {arm['measure'] == 'every' and 'after every chunk' or 'at the end'}"
                             f"{seconds})")
    general = result_files.read_general_set(run, EVALUATION)
    parts += ["", f"General set: {len(general['passages'])} held-out passages of "
              f"{general['selection'].get('articles')} articles, {len(general['questions'])} general questions "
              f"({general['selection'].get('per_dataset')}), {general['selection'].get('meta_trained_left_out')} "
              "meta-training questions left out.", ""]
    rows = analysis.read_summary(run, datasets, EVALUATION)
    order = {m: i for i, m in enumerate(METHODS)}
    parts += ["| dataset | method | acc | EM | F1 | answer NLL | n |", "|---|---|---:|---:|---:|---:|---:|"]
    parts += [f"| {r.dataset} | {r.method} | {r.acc:.1f} | {r.em:.1f} | {r.f1:.1f} | {r.nll:.2f} | {r.n} |"
              for r in sorted(rows, key=lambda r: (r.dataset, order.get(r.method, 99)))]
    table = drift_report.drift_table(run, datasets, EVALUATION)
    parts += ["", "Drift of the persistent weights (the main arm: before the stream and after it, or after every "
              "chunk with --measure every):", "", _md(table)]
    frontier = cpt_frontier.frontier(run, datasets, EVALUATION)
    parts += ["", "The frontier: knowledge injected against drift from the base model, every reported setting:", "",
              _md(frontier), "", "At equal drift (the frontier's verdict):", "",
              cpt_frontier.verdict(run, frontier), "", "The main arm over seeds 42, 43, 44 (mean ± SD):", "",
              seeds_table(frontier, datasets) if not isinstance(frontier, analysis.Missing) else str(frontier)]
    paired = drift_report.paired(run, datasets, EVALUATION)
    changes = drift_report.general_changes(table)
    calls = {} if isinstance(changes, analysis.Missing) else \
        {id(c.change): c for c in drift_report.holm_calls(changes)}
    parts += ["", "Paired comparisons (the main arm):", "", _md(paired), "", "General ability, paired:", ""]
    parts += [f"- {drift_report.describe_change(c, calls.get(id(c)))}"
              for c in ([] if isinstance(changes, analysis.Missing) else changes)]
    parts += ["", drift_report.verdict(paired, table, changes)]
    return "\n".join(parts) + "\n", frontier


def _md(x) -> str:
    return x.to_markdown() if hasattr(x, "to_markdown") else str(x)


def _report(a) -> None:
    from regrad_lib.io import paths
    from regrad_lib.reporting import analysis, figure_style, plots

    datasets = a.datasets.split(",")
    plan = arms(chosen_settings(), datasets, _general(a), a.measure)
    text, frontier = markdown(a.run, datasets, plan)
    out = paths.resolve(str(REFERENCE))
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpt.md").write_text(text, encoding="utf-8")
    (out / "cpt_predictions.csv").write_text(predictions_csv(a.run, plan), encoding="utf-8")
    if not isinstance(frontier, analysis.Missing):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(frontier.header())
        writer.writerows(frontier.rows())
        (out / "cpt_frontier.csv").write_text(buffer.getvalue(), encoding="utf-8")
        figure_style.save_figure(plots.cpt_frontier(frontier), out / "cpt_frontier.png")
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--only", default=None, help="comma-separated evaluations of the plan (default: all)")
    r.add_argument("--fixed-only", action="store_true", help="only what the CPT arms do not depend on")
    sub.add_parser("report")
    for s in sub.choices.values():
        s.add_argument("--run", default=RUN)
        s.add_argument("--datasets", default=",".join(DATASETS))
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--device", default="cpu")
        s.add_argument("--general-passages", type=int, default=GENERAL["general_passages"])
        s.add_argument("--general-questions", type=int, default=GENERAL["general_questions"])
        s.add_argument("--measure", choices=("end", "every"), default=MEASURE,
                       help="the main arm's drift after the stream only, or after every chunk")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    {"run": _run, "report": _report}[a.command](a)


if __name__ == "__main__":
    main()
