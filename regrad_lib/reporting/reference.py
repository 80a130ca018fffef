"""Reference results: a finished run's figures kept in a small committed folder (``reference/demo/``), README's
demo tables rendered from them, and a fresh run compared with them figure by figure.

    python -m regrad_lib.reporting.reference save --run demo [--seed-runs demo-seeds-s43,demo-seeds-s44]
    python -m regrad_lib.reporting.reference render      # rewrites README.md's marked blocks from reference/demo
    python -m regrad_lib.reporting.reference check       # exit 1 when README.md's blocks are not what render writes
    python -m regrad_lib.reporting.reference compare --run demo [--seed-runs ...]   # exit 1: a changed result
    python -m regrad_lib.reporting.reference save-report cpt --source demo:cpt --datasets probe,popqa
    python -m regrad_lib.reporting.reference compare --report cpt [--reference <saved rows .csv>]

The folder holds plain CSV files and ``reference.json`` (which runs, their training seeds, when, where, with which
command). Everything is read through the library's readers and computed with 06_analyze's statistics
(:mod:`regrad_lib.reporting.effects`): ``summary.csv`` and ``sweeps.csv`` as 05_evaluate wrote them, ``questions.csv``
(one row per question of every evaluated method and computed sweep point: EM, F1, answer NLL, the smallest
greedy margin, the prediction), ``effects.csv`` (the paired effects), ``relations.csv`` (EM per probe relation).
Rows carry the training ``seed`` of their run, so several seeds of one setting sit side by side. Datasets,
methods and score columns are whatever the run's files hold: a new method or a new column flows through.
Rendering: :mod:`regrad_lib.reporting.reference_render`; comparing: :mod:`regrad_lib.reporting.reference_compare`.

Experiment reports (``reference/experiments/<name>.md``, written by ``make experiments-<name>``) keep their
per-question rows beside them, ``<name>.questions.csv``: one row per question of every method and sweep point of the
runs and evaluations the report reads (``run``, ``evaluation`` and the figure's fields, then the scores, the answer
NLL, the margin and the prediction, as ``questions.csv`` here), written by the same make target with
``save-report``. ``compare --report <name>`` collects the same rows afresh from the results the saved rows name and
judges every figure by the same rules; ``make experiments-<name>`` rewrites the saved rows, so compare a rerun
before it, or against the committed copy (``git show HEAD:reference/experiments/<name>.questions.csv > old.csv``,
then ``--reference old.csv``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from regrad_lib.data import metrics
from regrad_lib.io import artifacts, ownership, paths, result_files
from regrad_lib.io.run_state import trained_revision
from regrad_lib.reporting import analysis, effects
from regrad_lib.reporting.reference_tables import (
    DEFAULT_FOLDER,
    EXPERIMENTS,
    META,
    NOT_SCORES,
    PROBE,
    TABLES,
    Results,
    load,
    read_table,
    rounded,
)

log = logging.getLogger(__name__)

COMMAND = "python -m regrad_lib.reporting.reference"

# --- collecting a run's figures --------------------------------------------------------------------------------

def run_seed(run: str) -> str:
    """The training seed of ``run`` (its saved ``train_args.json``), or the run's name when it has none."""
    from regrad_lib import config

    try:
        return str(config.load_preset(paths.output_dir(run)).train.seed)
    except (FileNotFoundError, ValueError, config.ConfigError):
        return run


def _question_rows(rows: list[dict], seed: str, dataset: str, method: str, gamma, groups: dict[str, str],
                   topk="", mixed=""):
    """One row per question; a sweep point's rows carry its ``gamma``, ``topk`` and ``mixed`` (a method's: '')."""
    for r in rows:
        scores = {k: 100 * v for k, v in metrics.score(r["prediction"], r["answers"]).items()}
        extra = {k: v for k, v in r.items() if k not in NOT_SCORES and isinstance(v, (int, float))}   # a bool: 0/1
        yield {"seed": seed, "dataset": dataset, "method": method, "gamma": gamma, "topk": topk, "mixed": mixed,
               "test_id": str(r["test_id"]),
               "group": groups.get(str(r["test_id"]), "") if dataset == PROBE else "",
               **{k: rounded(float(v)) for k, v in {**scores, **extra}.items()},
               "prediction": r["prediction"]}


def sweep_point_rows(run: str, point: dict, evaluation: str | None = None) -> list[dict] | None:
    """The prediction rows of one sweeps.csv point: its own file, or (a point 05_evaluate reused) the rows of
    ``no_update`` for gamma 0 or of the method itself at the gamma it was evaluated with; None if neither."""
    file = paths.sweep_predictions_file(run, point["dataset"], point["method"], point["gamma"], point["topk"],
                                        point.get("scheme") or "", evaluation, float(point.get("mixed") or 0.0))
    if file.is_file():
        return result_files.read_predictions(file, "05_evaluate's sweep")
    source = "no_update" if float(point["gamma"]) == 0.0 else point["method"]
    metrics_file = paths.metrics_file(run, point["dataset"], source, evaluation)
    if not metrics_file.is_file():
        return None
    saved = result_files.read_metrics(metrics_file)
    if source != "no_update" and (saved.get("gamma") != point["gamma"] or saved.get("topk") != point["topk"]):
        return None
    return result_files.method_predictions(run, point["dataset"], source, evaluation)


def collect_run(run: str, results: Results, data_root: str = "data/sample", split: str = "dev",
                evaluation: str | None = None) -> Results:
    """Add the figures of one run (05_evaluate's files, 06_analyze's statistics) to ``results``."""
    seed, datasets = collect_questions(run, results, data_root, split, evaluation)
    evaluated = {(r["dataset"], r["method"]) for r in results.summary if r["seed"] == seed}
    pairs = [p for p in effects.REPORTED_PAIRS if any((d, p[0]) in evaluated and (d, p[1]) in evaluated
                                                      for d in datasets)]
    table = effects.effect_table(run, datasets, pairs, evaluation=evaluation)
    for e in [] if isinstance(table, analysis.Missing) else table:
        acc = {} if e.acc is None else {"acc_a": rounded(e.acc.em_a), "acc_b": rounded(e.acc.em_b),
                                        "acc_only_a": e.acc.only_a, "acc_only_b": e.acc.only_b,
                                        "acc_p": rounded(e.acc.p)}
        results.effects.append({"seed": seed, "dataset": e.nll.dataset, "a": e.nll.method_a, "b": e.nll.method_b,
                                "mean": rounded(e.nll.mean), "se": rounded(e.nll.se), "n_lower": e.nll.n_lower,
                                "n": e.nll.n, "em_a": rounded(e.em.em_a), "em_b": rounded(e.em.em_b),
                                "only_a": e.em.only_a, "only_b": e.em.only_b, "p": rounded(e.em.p), **acc})
    relations = effects.probe_relations(run, datasets, data_root, split, evaluation)
    if not isinstance(relations, analysis.Missing):
        for (relation, method), (em, n) in relations.cells.items():
            results.relations.append({"seed": seed, "relation": relation, "method": method, "em": rounded(em),
                                      "n": n})
    return results


def collect_questions(run: str, results: Results, data_root: str = "data/sample", split: str = "dev",
                      evaluation: str | None = None) -> tuple[str, list[str]]:
    """Add one run's summary, sweep points and per-question rows to ``results``: (its seed, its datasets)."""
    seed = run_seed(run)
    summary = result_files.summary_rows(run, evaluation)
    results.summary += [{"seed": seed, **r} for r in summary]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    groups = {}
    if PROBE in datasets:
        from regrad_lib.data import probe
        groups = analysis.optional(probe.relation_groups, f"{data_root}/{PROBE}", split)
        groups = {} if isinstance(groups, analysis.Missing) else groups
    for r in summary:
        rows = result_files.method_predictions(run, r["dataset"], r["method"], evaluation)
        results.questions += _question_rows(rows, seed, r["dataset"], r["method"], "", groups)
    sweeps = paths.sweeps_file(run, evaluation)
    for point in result_files.sweep_rows(run, evaluation) if sweeps.is_file() else []:
        results.sweeps.append({"seed": seed, **point})
        rows = sweep_point_rows(run, point, evaluation)
        if rows is not None:
            results.questions += _question_rows(rows, seed, point["dataset"], point["method"], point["gamma"],
                                                groups, point["topk"], float(point.get("mixed") or 0.0))
    return seed, datasets


def collect(run: str, seed_runs: Sequence[str] = (), data_root: str = "data/sample", split: str = "dev",
            evaluation: str | None = None) -> Results:
    """The figures of ``run`` and of the runs of the same setting with other seeds."""
    results = Results()
    for r in [run, *seed_runs]:
        collect_run(r, results, data_root, split, evaluation)
    seeds = [run_seed(r) for r in [run, *seed_runs]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs {[run, *seed_runs]} have the training seeds {seeds}: each run must have its own")
    results.meta = {"run": run, "runs": dict(zip(seeds, [run, *seed_runs])), "main_seed": seeds[0],
                    "trained_at": {seed: trained_revision(r) for seed, r in zip(seeds, [run, *seed_runs])},
                    "evaluation": evaluation, "data_root": data_root, "split": split}
    chosen = baselines_chosen(run)
    if chosen:
        results.meta["baselines"] = chosen
    return results


def baselines_chosen(run: str) -> dict:
    """The fine-tuned baselines of ``run`` (sft, rag_sft) that were trained: each one's grid with its validation
    rows and the chosen learning rate (``selected.json``)."""
    out = {}
    for method in ("sft", "rag_sft"):
        file = paths.baseline_selection(run, method)
        if file.is_file():
            out[method] = artifacts.read_json(file)
    return out


# --- the folder ------------------------------------------------------------------------------------------------

def _csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def machine() -> dict:
    """Where the reference was made (for the record; results must not depend on it beyond rounding)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from regrad_lib.core.learner import cpu_has_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": cpu_has_bf16(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def check_folder(folder: str | Path) -> Path:
    """The reference folder ``folder`` (repo-relative), if regrad may write it: absent, empty, or a reference it
    wrote (holding ``reference.json``); any other folder, a file or a link is refused, naming it (never replaced)."""
    target = paths.resolve(folder)
    ownership.check_replaceable(target, [META], "reference",
                                "name a new folder with --reference (or one a reference was saved in), or move "
                                "this one away")
    return target


def save(results: Results, folder: str | Path = DEFAULT_FOLDER, command: str | None = None) -> Path:
    """Write ``results`` into ``folder`` (repo-relative), replacing an earlier reference there (only a folder
    regrad wrote: :func:`check_folder`). ``machine`` and ``git_revision`` record where and with which code it was
    saved: save on the machine that ran the runs."""
    target = check_folder(folder)
    meta = {**results.meta, "created": datetime.date.today().isoformat(), "git_revision": artifacts.git_revision(),
            "machine": machine(), "command": command}
    with artifacts.atomic_dir(target) as tmp:
        for name in TABLES:
            rows = getattr(results, name)
            if rows:
                (tmp / f"{name}.csv").write_text(_csv(rows), encoding="utf-8")
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


# --- experiment reports: their per-question rows --------------------------------------------------------------

def report_file(name: str) -> Path:
    """``reference/experiments/<name>.questions.csv``: the per-question rows behind the report ``<name>.md``."""
    from regrad_lib.io import params

    return paths.resolve(f"{EXPERIMENTS}/{params.folder_name('report', name)}.questions.csv")


def parse_source(text: str) -> tuple[str, str | None]:
    """``run`` or ``run:evaluation`` → (run, evaluation or None)."""
    run, _, evaluation = text.partition(":")
    return run, evaluation or None


def collect_rows(sources: Sequence[tuple[str, str | None]], datasets: Sequence[str] | None = None,
                 data_root: str = "data/sample", split: str = "dev") -> list[dict]:
    """The per-question rows of every method and sweep point of each (run, evaluation), of ``datasets`` only when
    given: ``run`` and ``evaluation`` ('' for the main results) first, then :func:`_question_rows`' fields."""
    rows: list[dict] = []
    for run, evaluation in dict.fromkeys(sources):
        part = Results()
        collect_questions(run, part, data_root, split, evaluation)
        rows += [{"run": run, "evaluation": evaluation or "", **{k: v for k, v in r.items() if k != "seed"}}
                 for r in part.questions if datasets is None or r["dataset"] in datasets]
    if not rows:
        raise ValueError(f"no per-question rows in {list(sources)} for datasets {datasets}: 05_evaluate writes them")
    return rows


def save_report(name: str, rows: list[dict], file: str | Path | None = None) -> Path:
    """Write a report's per-question rows to :func:`report_file` (or ``file``), replacing what was there."""
    return artifacts.write_text(report_file(name) if file is None else paths.resolve(file), _csv(rows))


def load_report(file: str | Path) -> list[dict]:
    """Saved per-question rows of a report."""
    file = paths.resolve(file)
    if not file.is_file():
        raise FileNotFoundError(f"{paths.relative(file)} not found: it is written by the report's make target "
                                f"({COMMAND} save-report <name> --source <run>[:<eval>])")
    return read_table(file)


def fresh_rows(saved: list[dict], data_root: str = "data/sample") -> list[dict]:
    """The rows the saved ones name (their runs, evaluations and datasets), collected again from the results."""
    sources = [(r["run"], r["evaluation"] or None) for r in saved]
    return collect_rows(sources, sorted({r["dataset"] for r in saved}), data_root)


# --- command line ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "render", "check", "compare", "save-report"])
    parser.add_argument("name", nargs="?", help="save-report: the report's name (reference/experiments/<name>.md)")
    parser.add_argument("--run", help="the run (save, compare), e.g. demo")
    parser.add_argument("--report", help="compare: an experiment report's saved per-question rows, e.g. cpt")
    parser.add_argument("--source", action="append", default=[],
                        help="save-report: run or run:evaluation whose rows the report reads (repeat for several)")
    parser.add_argument("--datasets", help="save-report: only these datasets, a,b")
    parser.add_argument("--seed-runs", default="", help="runs of the same setting with other seeds, a,b")
    parser.add_argument("--evaluation", help="a named evaluation of the runs (default: their main results)")
    parser.add_argument("--data-root", default="data/sample", help="where the probe's questions are")
    parser.add_argument("--reference", help=f"the reference folder (default {DEFAULT_FOLDER}); save-report and "
                        "compare --report: the saved rows' file (default reference/experiments/<name>.questions.csv)")
    parser.add_argument("--readme", default="README.md", help="the file whose marked blocks render/check rewrite")
    return parser


def main(argv: list[str] | None = None) -> int:
    from regrad_lib.reporting import reference_compare, reference_render

    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    seed_runs = [r.strip() for r in args.seed_runs.split(",") if r.strip()]
    if args.action == "save-report":
        if not args.name or not args.source:
            parser.error("save-report needs the report's name and at least one --source")
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
        rows = collect_rows([parse_source(s) for s in args.source], datasets, args.data_root)
        print(f"wrote {paths.relative(save_report(args.name, rows, args.reference))} ({len(rows)} rows)")
        return 0
    if args.action == "compare" and args.report:
        saved = load_report(args.reference or report_file(args.report))
        report = reference_compare.compare_rows(saved, fresh_rows(saved, args.data_root))
        print(report.text())
        return 0 if report.ok else 1
    args.reference = args.reference or DEFAULT_FOLDER
    if args.action in ("save", "compare") and not args.run:
        parser.error(f"{args.action} needs --run (or compare --report <name>)")
    if args.action == "save":
        try:
            check_folder(args.reference)     # before reading any run: a folder not ours is refused at once
        except ownership.NotOursError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        folder = save(collect(args.run, seed_runs, args.data_root, evaluation=args.evaluation), args.reference,
                      command=f"{COMMAND} " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(f"wrote {paths.relative(folder)}")
        return 0
    if args.action in ("render", "check"):
        readme = paths.resolve(args.readme)
        text = readme.read_text(encoding="utf-8")
        rendered = reference_render.render_blocks(text, load(args.reference), args.reference)
        if args.action == "render":
            if rendered != text:
                artifacts.write_text(readme, rendered)
            print(f"{paths.relative(readme)}: {'rewritten' if rendered != text else 'already in sync'}")
            return 0
        stale = reference_render.stale_blocks(text, rendered)
        print(f"{paths.relative(readme)}: " + (f"blocks out of sync with {args.reference}: {', '.join(stale)}; "
                                               f"run {COMMAND} render" if stale else "in sync"))
        return 1 if stale else 0
    report = reference_compare.compare(load(args.reference), collect(args.run, seed_runs, args.data_root,
                                                                     evaluation=args.evaluation))
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
