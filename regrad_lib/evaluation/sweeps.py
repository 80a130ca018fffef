"""The sweeps of 05_evaluate: scores of one method at every (gamma, topk, mixed), merged into
``results/<run>/sweeps.csv``; finished evaluations with the same settings are reused (gamma 0 of a bank method is
exactly ``no_update``).

- gamma: the inference-time scale of the update;
- topk: how many retrieved passages' gradients are summed (each k reads the bank that holds every question's top
  k: its own, or that of a larger top-K, :func:`bank.serving_topk`);
- mixed: the mixed-documents ablation, the share of each question's top-k passages replaced by the next
  question's (:func:`tasks.mix`; the bank must hold them: 04_encode's ``mixed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from regrad_lib import config
from regrad_lib.answering.harness import run_method
from regrad_lib.answering.specs import SPECS, check_methods
from regrad_lib.bank import schemes
from regrad_lib.core.learner import Learner
from regrad_lib.core.task_batches import load as load_tasks
from regrad_lib.core.task_batches import mixed_count
from regrad_lib.evaluation.learner_once import finished_state, loader
from regrad_lib.evaluation.results import (
    finished_scores,
    json_rows,
    score_rows,
    settings,
)
from regrad_lib.io import artifacts, distributed, params, paths, runlock
from regrad_lib.io.result_files import SWEEP_FIELDS, merge_table, read_table

KEY = ("dataset", "method", "gamma", "topk", "mixed", "scheme")


@params.typed
@runlock.writer("05_evaluate")
def sweep(run: str, dataset: str, *, gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0), topks: Sequence[int] = (3,),
          mixes: Sequence[float] = (0.0,), method: str = "regrad", split: str = "dev", limit: int | None = None,
          device: str = "cpu", overwrite: bool = False, learner: Learner | Callable[[], Learner] | None = None,
          evaluation: str | None = None, allow_unfinished: bool = False,
          scheme: str = schemes.DEFAULT) -> list[dict]:
    """Scores of ``method`` for every (gamma, topk, mixed); rows merged into ``results/<run>/sweeps.csv``, returned.

    Points already in sweeps.csv are kept unless ``overwrite``. Each top-k reads the bank that serves it
    (``offline/<K>/<run>/<dataset>/<split>_all/<scheme>``, K = :func:`bank.serving_topk`). An unfinished run needs
    ``allow_unfinished=True``.
    """
    check_methods([method])
    for i, g in enumerate(gammas):
        config.check_number(g, f"gammas[{i}]", allow_zero=True)
    for topk in topks:
        for m in mixes:
            mixed_count(int(topk), m)             # each share in [0, 1]
    get_learner = loader(run, device, learner, allow_unfinished)
    finished = finished_state(run, get_learner)
    file = paths.sweeps_file(run, evaluation)
    stored_as = schemes.parse(scheme).name if SPECS[method].reads_bank else ""
    grid = [(int(k), float(m)) for k in topks for m in mixes]
    plan = distributed.on_main(sweep_plan, run, dataset, method, gammas, grid, split, limit, overwrite, evaluation,
                               finished, scheme)
    new = []
    for (topk, mixed), reused in zip(grid, plan):
        points = list(reused)
        todo = [g for g in points if reused[g] is None]
        if todo:
            current, store = get_learner(), None
            current.require_finished(allow_unfinished)
            items = load_tasks(dataset, split, topk, end=limit, mixed=mixed)
            if SPECS[method].reads_bank:
                from regrad_lib.bank import reader as bank_module
                store = bank_module.open_bank(bank_module.serving_topk(topk, run, dataset, split, scheme), run,
                                              dataset, split, scheme, learner=current)
            for gamma in todo:
                rows = run_method(method, current, items, bank=store, gamma=gamma, topk=topk)
                # kept per point, so a rerun can be paired with this one question by question
                distributed.on_main(artifacts.write_jsonl, paths.sweep_predictions_file(
                    run, dataset, method, gamma, topk, stored_as, evaluation, mixed), json_rows(rows))
                reused[gamma] = score_rows(rows)
        new += [{"dataset": dataset, "method": method, "gamma": g, "topk": topk, "mixed": mixed, "scheme": stored_as,
                 **reused[g]} for g in points]
    if new:
        distributed.on_main(merge_table, file, SWEEP_FIELDS, new, key=KEY)
    wanted = {(float(g), k, m) for g in gammas for k, m in grid}
    return distributed.on_main(lambda: [r for r in read_table(file, SWEEP_FIELDS)
                                        if r["dataset"] == dataset and r["method"] == method
                                        and (r["gamma"], r["topk"], r["mixed"]) in wanted
                                        and (r.get("scheme") or "") == stored_as]
                               if file.exists() else [])


def sweep_plan(run, dataset, method, gammas, grid, split, limit, overwrite, evaluation, finished,
               scheme=schemes.DEFAULT) -> list[dict]:
    """Per (topk, mixed) of ``grid``: ``{gamma: scores of a finished evaluation with these settings, or None}`` for
    the points not yet in sweeps.csv (all points with ``overwrite``); points of another bank scheme do not count."""
    file = paths.sweeps_file(run, evaluation)
    stored_as = schemes.parse(scheme).name if SPECS[method].reads_bank else ""
    done = {(r["dataset"], r["method"], float(r["gamma"]), int(r["topk"]), float(r["mixed"]), r.get("scheme") or "")
            for r in read_table(file, SWEEP_FIELDS)} if file.exists() and not overwrite else set()
    plan = []
    for topk, mixed in grid:
        points = [float(g) for g in gammas if (dataset, method, float(g), topk, mixed, stored_as) not in done]
        reused = {g: finished_scores(run, dataset, method, settings(method, split, topk, g, limit, finished, scheme,
                                                                    mixed), evaluation) for g in points}
        if 0.0 in reused and reused[0.0] is None and SPECS[method].weights == "meta" and not SPECS[method].context:
            # gamma 0 is no update at all: exactly no_update's answers (tested), so its finished results serve
            reused[0.0] = finished_scores(run, dataset, "no_update", settings("no_update", split, topk, 0.0, limit,
                                                                              finished, scheme), evaluation)
        plan.append(reused)
    return plan


def sweep_all(run: str, datasets: Sequence[str], *, gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
              topks: Sequence[int] = (3,), mixes: Sequence[float] = (0.0,), device: str = "cpu",
              learner: Learner | Callable[[], Learner] | None = None, allow_unfinished: bool = False,
              **kwargs) -> list[dict]:
    """:func:`sweep` for every dataset, loading the learner at most once (nothing when ``gammas``, ``topks`` or
    ``mixes`` is empty)."""
    if not gammas or not topks or not mixes:
        return []
    get_learner = loader(run, device, learner, allow_unfinished)
    return [row for dataset in datasets
            for row in sweep(run, dataset, gammas=gammas, topks=topks, mixes=mixes, device=device,
                             learner=get_learner, allow_unfinished=allow_unfinished, **kwargs)]
