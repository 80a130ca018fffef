"""Storage schemes side by side: regrad on each scheme's bank of one run.

05_evaluate (parameter ``frontier_schemes``; 04_encode writes those banks from the same gradients) answers every
question with ``regrad`` once per scheme and writes ``results/<run>/<dataset>/schemes/regrad.<scheme>.
{predictions.jsonl,metrics.json}`` and ``results/<run>/schemes.csv``. 06_analyze reads them as the size/quality
frontier (:mod:`regrad_lib.reporting.frontier_report`). Opt-in: the default pipeline evaluates one scheme only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from regrad_lib.answering import harness
from regrad_lib.bank import schemes
from regrad_lib.core import task_batches
from regrad_lib.evaluation import learner_once, results
from regrad_lib.io import artifacts, params, paths, runlock
from regrad_lib.io.result_files import SCHEME_FIELDS, merge_table

__all__ = ["evaluate_all", "evaluate_schemes"]

log = logging.getLogger(__name__)


@params.typed
@runlock.writer("05_evaluate")
def evaluate_schemes(run: str, dataset: str, schemes_: Sequence[str], *, split: str = "dev", topk: int = 3,
                     gamma: float = 1.0, limit: int | None = None, device: str = "cpu", overwrite: bool = False,
                     learner=None, evaluation: str | None = None) -> list[dict]:
    """``regrad`` on the ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>`` bank of each scheme; rows of
    schemes.csv. A scheme already evaluated with the same settings is kept unless ``overwrite``."""
    from regrad_lib.bank import reader

    get_learner: Callable = learner_once.loader(run, device, learner)
    rows = []
    for name in dict.fromkeys(schemes.parse(s).name for s in schemes_):
        predictions_file = paths.scheme_predictions_file(run, dataset, name, evaluation)
        metrics_file = paths.scheme_metrics_file(run, dataset, name, evaluation)
        settings = {"split": split, "limit": limit, "topk": topk, "gamma": gamma, "scheme": name}
        saved = artifacts.read_json(metrics_file) if metrics_file.exists() and not overwrite else {}
        if not saved or any(saved.get(k) != v for k, v in settings.items()):
            current = get_learner()
            with reader.open_bank(topk, run, dataset, split, name, learner=current) as store:
                items = task_batches.load(dataset, split, topk, end=limit)
                out = harness.run_method("regrad", current, items, bank=store, gamma=gamma, topk=topk)
                saved = {**results.score_rows(out), **settings, "dataset": dataset, "method": "regrad",
                         "bytes_per_passage": store.bytes_per_passage, "meta_hash": current.meta_hash(),
                         "provenance": artifacts.provenance({"run": run, "device": str(current.device)})}
            artifacts.write_jsonl(predictions_file, out)
            artifacts.write_json(metrics_file, saved)       # last: its presence marks the scheme as done
            log.info("%s/regrad [%s]: EM %.1f F1 %.1f NLL %.4f", dataset, name, saved["em"], saved["f1"], saved["nll"])
        rows.append({k: saved[k] for k in SCHEME_FIELDS})
    merge_table(paths.schemes_file(run, evaluation), SCHEME_FIELDS, rows, key=("dataset", "scheme"))
    return rows


@params.typed
def evaluate_all(run: str, datasets: Sequence[str], schemes_: Sequence[str], *, device: str = "cpu",
                 learner=None, **kwargs) -> list[dict]:
    """:func:`evaluate_schemes` for every dataset, loading the learner at most once (nothing for no schemes)."""
    if not schemes_:
        return []
    get_learner = learner_once.loader(run, device, learner)
    return [r for d in datasets
            for r in evaluate_schemes(run, d, schemes_, device=device, learner=get_learner, **kwargs)]
