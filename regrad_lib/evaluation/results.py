"""05_evaluate's results of a method: per dataset and method ``<method>.predictions.jsonl`` and
``<method>.metrics.json`` (the scores and the settings they were computed with, so a re-run keeps what matches and
refuses what does not), under ``results/<run>/`` (or a named evaluation's ``results/<run>/evaluations/<evaluation>/``).
All writes are atomic; ``metrics.json`` is written last and marks a method done. The files' format, their one reader
and the tables ``summary.csv`` and ``sweeps.csv`` are :mod:`regrad_lib.io.result_files`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from regrad_lib.answering.specs import SPECS, check_methods
from regrad_lib.bank import schemes
from regrad_lib.data import metrics
from regrad_lib.io import artifacts, paths
from regrad_lib.io.result_files import SUMMARY_FIELDS, method_predictions, read_metrics

__all__ = ["examples", "finished_scores", "json_rows", "method_files", "plan", "saved_settings", "score_rows",
           "settings", "table", "write_method"]

log = logging.getLogger(__name__)


def score_rows(rows: Sequence[dict]) -> dict:
    """EM/acc/F1/precision/recall ×100 (:func:`metrics.aggregate`; label accuracy for yes/no and multiple-choice
    rows), mean answer NLL and n of prediction rows."""
    out = metrics.aggregate(metrics.score_kind(r["prediction"], r["answers"], r.get("answer_kind", "short"),
                                               r.get("choices", ())) for r in rows)
    finite = [r["answer_nll"] for r in rows if r["answer_nll"] is not None and math.isfinite(r["answer_nll"])]
    out["nll"] = sum(finite) / len(finite) if finite else math.nan
    out["truncated_prompts"] = sum(1 for r in rows if r.get("truncated_passages"))   # passages cut to fit
    return out


def method_files(run: str, dataset: str, method: str, evaluation: str | None = None) -> tuple:
    return (paths.predictions_file(run, dataset, method, evaluation),
            paths.metrics_file(run, dataset, method, evaluation))


def settings(method: str, split: str, topk: int, gamma: float, limit: int | None, finished: bool | None,
              scheme: str = schemes.DEFAULT, mixed: float = 0.0, cpt: dict | None = None,
              baseline: dict | None = None) -> dict:
    """What a method's results depend on (kept results must match); ``finished``: the run's training had;
    ``scheme``: the storage scheme of the bank it read (bank methods only); ``mixed``: the share of each question's
    passages replaced by the next question's (methods that use passages only); ``cpt``: the continual
    post-training that made the weights of cpt / cpt_rag (:func:`regrad_lib.cpt.continual.answer_settings`);
    ``baseline``: the fine-tuning that made the weights of sft / rag_sft (:func:`regrad_lib.training.sft.planned`)."""
    spec = SPECS[method]
    out = {"split": split, "limit": limit, "topk": topk if spec.context or not spec.base else None,
           "gamma": gamma if spec.adapts else None,
           "scheme": schemes.parse(scheme).name if spec.reads_bank else None,
           "mixed": float(mixed) if spec.uses_passages else None,
           "run_finished": None if spec.base else finished}
    if spec.weights == "cpt":
        return {**out, "cpt": cpt}
    return {**out, "baseline": baseline} if spec.weights in ("sft", "rag_sft") else out


def saved_settings(saved: dict, wanted: dict) -> dict:
    """The settings a ``metrics.json`` was computed with, for comparison with ``wanted``: files written before
    ``run_finished`` or ``mixed`` were recorded count as matching on the first and as unmixed (0.0)."""
    legacy = {"run_finished": wanted.get("run_finished"), "mixed": None if wanted.get("mixed") is None else 0.0}
    return {k: saved.get(k, legacy.get(k)) for k in wanted}


def finished_scores(run: str, dataset: str, method: str, settings: dict, evaluation: str | None = None) -> dict | None:
    """Scores of a finished :func:`evaluate` of ``method`` with exactly these settings, else None."""
    file = method_files(run, dataset, method, evaluation)[1]
    saved = read_metrics(file) if file.exists() else {}
    if not saved or saved_settings(saved, settings) != settings:
        return None
    saved = with_current_scores(saved, run, dataset, method, evaluation)
    return {k: saved[k] for k in ("em", "acc", "f1", "precision", "recall", "nll", "n")}


def with_current_scores(saved: dict, run: str, dataset: str, method: str, evaluation: str | None = None) -> dict:
    """A kept ``metrics.json`` with every score of today's :func:`score_rows`: one written before a score existed
    (``acc``) is scored again from its predictions, which hold everything a score needs."""
    missing = [m for m in metrics.METRICS if m not in saved]
    if not missing:
        return saved
    rescored = score_rows(method_predictions(run, dataset, method, evaluation))
    return {**saved, **{m: rescored[m] for m in missing}}


def plan(run, dataset, methods, split, topk, gamma, limit, overwrite, evaluation,
          finished, scheme=schemes.DEFAULT, mixed=0.0, cpt=None, baselines=None) -> tuple[dict[str, dict], list]:
    """(results kept from finished methods, the methods to compute); refuses results of other settings."""
    out: dict[str, dict] = {}
    todo = []
    for method in methods:
        _, metrics_file = method_files(run, dataset, method, evaluation)
        if metrics_file.exists() and not overwrite:
            saved = read_metrics(metrics_file)
            wanted = settings(method, split, topk, gamma, limit, finished, scheme, mixed, cpt,
                              (baselines or {}).get(method))
            found = saved_settings(saved, wanted)
            if found != wanted:
                raise FileExistsError(f"{paths.relative(metrics_file)} was computed with {found}, not {wanted}: "
                                      "pass overwrite=True (05_evaluate: overwrite = True) to recompute it, or "
                                      "name this evaluation (evaluation='...') to keep both")
            log.info("%s/%s: kept the existing results (overwrite=False)", dataset, method)
            out[method] = {**with_current_scores(saved, run, dataset, method, evaluation), "status": "kept"}
        else:
            todo.append(method)
    return out, todo


def write_method(run, dataset, method, rows, learner, split, topk, gamma, limit, finished, evaluation=None,
                  scheme=schemes.DEFAULT, mixed=0.0, cpt=None, checks: dict | None = None,
                  baseline: dict | None = None) -> dict:
    """Write a method's predictions and, last, its ``metrics.json``; ``checks``: facts verified while answering
    (e.g. ``persistent_unchanged``), recorded beside the scores."""
    predictions_file, metrics_file = method_files(run, dataset, method, evaluation)
    scores = score_rows(rows)
    source = {"run": run, "dataset": dataset, "method": method, "evaluation": evaluation,
              "preset": learner.preset.to_dict(), "meta_hash": learner.meta_hash(), "device": str(learner.device)}
    result = {**scores, **settings(method, split, topk, gamma, limit, finished, scheme, mixed, cpt, baseline),
              **(checks or {}),
              "method": method, "dataset": dataset, "provenance": artifacts.provenance(source)}
    artifacts.write_jsonl(predictions_file, json_rows(rows))
    artifacts.write_json(metrics_file, {**result, "nll": json_number(result["nll"])})   # last: marks it done
    log.info("%s/%s: EM %.1f acc %.1f F1 %.1f NLL %.3f (n=%d)", dataset, method, scores["em"], scores["acc"],
             scores["f1"], scores["nll"], scores["n"])
    return {**result, "status": "computed"}


def json_rows(rows: Sequence[dict]) -> list[dict]:
    """Prediction rows for strict JSON (a non-finite answer NLL or margin written as null)."""
    return [{**r, "answer_nll": json_number(r["answer_nll"]),
             **({"min_margin": json_number(r["min_margin"])} if "min_margin" in r else {})} for r in rows]


def json_number(value: float | None) -> float | None:
    """A score for strict JSON: a NaN or inf (no finite answer NLL) is written as null."""
    return value if value is not None and math.isfinite(value) else None


def examples(run: str, dataset: str, methods: Sequence[str], n: int = 5, evaluation: str | None = None) -> list[dict]:
    """The first ``n`` questions with their gold answers and every method's prediction, side by side."""
    by_method = {m: method_predictions(run, dataset, m, evaluation)[:n] for m in check_methods(methods)}
    first = next(iter(by_method.values()))
    return [{"question": r["question"], "gold": r["answers"][0], **{m: rows[i]["prediction"]
             for m, rows in by_method.items()}} for i, r in enumerate(first)]


def table(rows: Sequence[dict], fields: Sequence[str] = SUMMARY_FIELDS) -> str:
    """A fixed-width text table of summary or sweep rows, for the notebook."""
    cells = [[str(f) for f in fields]] + [[f"{r[f]:.2f}" if isinstance(r[f], float) else str(r[f]) for f in fields]
                                          for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(fields))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in range(len(fields)))
                     for c in cells)
