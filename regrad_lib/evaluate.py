"""05_evaluate: ReGrad and its baselines through one harness (method.md "Baselines", equation 4).

Every method uses the same prompts (:func:`prompts.prompt_ids`), the same batched greedy decoding with the
newline stop rule (:mod:`regrad_lib.generation`) and the same answer extraction; only the weights and whether
the passages sit in the prompt differ:

============== ============ ================ ===========================================================
method         weights      passages in      LoRA weights of question ``q``
============== ============ ================ ===========================================================
closed_book    base model   no               none (``lora.disabled``)
rag            base model   prompt           none
regrad         meta LoRA    no               ``phi - gamma·alpha ⊙ Σ g_d`` from the Gradient Bank (eq. 2)
regrad_icl     meta LoRA    prompt           same, for a model meta-trained with ``blind_context = false``
regrad_online  meta LoRA    no               same, gradients computed on the fly (no bank)
shift          meta LoRA    no               gradients of question ``q-1``'s passages (question 0: the last's)
no_update      meta LoRA    no               ``phi`` (gamma = 0)
============== ============ ================ ===========================================================

A batch of questions runs with per-row adapted weights ``[batch, ...]`` (batched low-rank matmuls), never one
question at a time with weights copied in and out. Each row also gets ``answer_nll`` (scored from the prompt's KV
cache, right after the prefill that decoding uses): the mean token NLL of the
first gold answer (label `` answer\\n``) under that method's weights and prompt.

Outputs (all atomic, results of a finished method are kept unless ``overwrite``): ``results/<run>/<dataset>/
<method>.predictions.jsonl`` and ``<method>.metrics.json``, ``results/<run>/summary.csv`` and ``sweeps.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from . import artifacts, config, distributed, generation, lora, metrics, paths, prompts, regrad, schemes, tasks
from . import params, runlock
from .learner import Learner, run_finished, trained_state

log = logging.getLogger(__name__)

METHODS = ("closed_book", "rag", "regrad", "regrad_icl", "regrad_online", "shift", "no_update")
SUMMARY_FIELDS = ("dataset", "method", "em", "f1", "precision", "recall", "nll", "n")
SWEEP_FIELDS = ("dataset", "method", "gamma", "topk", "scheme", "em", "f1", "precision", "recall", "nll", "n")
Source = Literal["none", "phi", "bank", "online"]


@dataclass(frozen=True)
class MethodSpec:
    """How a method answers: base model or meta LoRA, passages in the prompt, where the gradients come from."""
    base: bool
    context: bool
    source: Source
    shift: bool = False


SPECS = {
    "closed_book": MethodSpec(base=True, context=False, source="none"),
    "rag": MethodSpec(base=True, context=True, source="none"),
    "regrad": MethodSpec(base=False, context=False, source="bank"),
    "regrad_icl": MethodSpec(base=False, context=True, source="bank"),
    "regrad_online": MethodSpec(base=False, context=False, source="online"),
    "shift": MethodSpec(base=False, context=False, source="bank", shift=True),
    "no_update": MethodSpec(base=False, context=False, source="phi"),
}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, validated (a typo names the allowed ones)."""
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if m not in SPECS]
    if bad:
        raise ValueError(f"Unknown method(s) {bad}; choose from {list(METHODS)}")
    return list(methods)


def needs_bank(methods: Sequence[str]) -> bool:
    return any(SPECS[m].source == "bank" for m in check_methods(methods))


# --- the harness ------------------------------------------------------------------------------------------

def _prompt(learner: Learner, task: tasks.Task, context: bool) -> prompts.Prompt:
    return prompts.build_prompt(learner.tokenizer, task.question, task.passages if context else None,
                                learner.preset.learner)


def _weights(spec: MethodSpec, learner: Learner, batch: Sequence[tasks.Task], pids: Sequence[Sequence[str]],
             bank, gamma: float) -> dict[str, torch.Tensor] | None:
    """The LoRA weights of a batch: None (base model), ``phi`` (shared) or per-row ``phi'_q`` (equation 2)."""
    if spec.base:
        return None
    phi = {n: p.detach() for n, p in learner.phi.items()}
    if spec.source == "phi":
        return phi
    if spec.source == "online":
        grads = generation.online_gradients(learner, batch)
    else:
        grads = bank.sum_many([list(p) for p in pids], learner.device)
    with torch.no_grad():
        grads = {n: g.to(device=learner.device, dtype=phi[n].dtype) for n, g in grads.items()}
        return {n: w.detach() for n, w in regrad.apply_update(phi, grads, learner.alpha, gamma).items()}


def _require_bank(bank):
    from .bank import GradientBank

    if not isinstance(bank, GradientBank):
        raise TypeError(f"bank= must be a regrad_lib.bank.GradientBank (bank.open_bank(topk, run, dataset, split, "
                        f"scheme, learner=learner)), not {type(bank).__name__}")
    return bank


def checked_bank(bank, learner: Learner):
    """``bank`` after the same model / LoRA layout / meta-weights checks as ``open_bank(learner=...)``."""
    return _require_bank(bank).check(learner)


def _run(spec: MethodSpec, learner: Learner, items: Sequence[tasks.Task], *, bank=None, gamma: float = 1.0,
         topk: int = 3, batch_size: int | None = None, nll: bool = True, desc: str = "evaluate") -> list[dict]:
    if spec.source == "bank" and bank is None:
        raise ValueError("this method reads gradients from a Gradient Bank: pass bank= (bank.open_bank(topk, run, "
                         "dataset, split, scheme, learner=learner), written by 04_encode)")
    if bank is not None:
        checked_bank(bank, learner)
    items = [tasks.Task(t.test_id, t.question, t.answers, t.passages[:topk], t.passage_ids[:topk]) for t in items]
    if spec.source in ("bank", "online") and any(not t.passages for t in items):
        raise ValueError("ReGrad methods need each question's retrieved passages; some tasks have none")
    pids = [list(t.passage_ids) for t in items]
    if spec.shift:      # question i takes question i-1's passages; question 0 the last question's
        pids = pids[-1:] + pids[:-1]
    used = pids if spec.source in ("bank", "online") else [list(t.passage_ids) if spec.context else [] for t in items]
    batch_size = batch_size or learner.preset.generation.batch_size
    built = [_prompt(learner, t, spec.context) for t in items]
    prompt_ids = [p.ids for p in built]
    order = sorted(range(len(items)), key=lambda i: -len(prompt_ids[i]))   # little padding per batch
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mine = distributed.turns(len(batches))     # a job's processes take turns over the very same batches
    done: list[list[tuple[int, dict]]] = []
    model, tok = learner.model, learner.tokenizer
    max_new = learner.preset.generation.max_new_tokens
    with tqdm(total=sum(len(batches[b]) for b in mine), desc=desc, unit="question",
              disable=not distributed.job().main) as bar:
        for b in mine:
            index = batches[b]
            batch = [items[i] for i in index]
            weights = _weights(spec, learner, batch, [pids[i] for i in index], bank, gamma)
            gold = [prompts.answer_ids(tok, t.answer) for t in batch] if nll else None
            with learner.autocast(), (lora.disabled(model) if spec.base else contextlib.nullcontext()):
                out = generation.generate(model, tok, [prompt_ids[i] for i in index], max_new_tokens=max_new,
                                          weights=weights, score_ids=gold, stop=learner.preset.generation.stop)
            done.append([(i, {"test_id": task.test_id, "question": task.question, "answers": list(task.answers),
                              "prediction": gen.answer, "generated": gen.text, "passage_ids": used[i],
                              "answer_nll": gen.answer_nll, "truncated_passages": built[i].truncated})
                         for i, task, gen in zip(index, batch, out)])
            bar.update(len(batch))
    rows: list[dict | None] = [None] * len(items)
    for i, row in (pair for part in distributed.merge_turns(done, len(batches)) for pair in part):
        rows[i] = row
    return rows  # type: ignore[return-value]


def run_method(method: str, learner: Learner, items: Sequence[tasks.Task], *, bank=None, gamma: float | None = None,
               topk: int = 3, batch_size: int | None = None) -> list[dict]:
    """Answer every task with ``method``; one prediction row per task, in the input order.

    Rows: test_id, question, answers (gold), prediction, generated (raw new text), passage_ids (the passages
    whose text or gradients were used), answer_nll. ``bank``: a :class:`regrad_lib.bank.GradientBank` for regrad,
    regrad_icl and shift, checked against ``learner`` (model, LoRA layout, meta weights) however it was opened;
    every row it serves is checked against its checksum. ``no_update`` ignores ``gamma``; ``gamma=None`` is the
    run's ``learner.gamma``.
    """
    spec = SPECS[check_methods([method])[0]]
    gamma = learner.preset.learner.gamma if gamma is None else gamma
    if method == "regrad_icl" and learner.preset.learner.blind_context:
        log.warning("regrad_icl on a learner meta-trained with blind_context=true: it never saw passages in "
                    "its prompt during meta-training")
    return _run(spec, learner, items, bank=bank, gamma=0.0 if method == "no_update" else gamma, topk=topk,
                batch_size=batch_size, desc=method)


def question_weights(learner: Learner, task: tasks.Task, *, bank=None, gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """One question's ``phi'_q`` (equation 2, 2-D tensors): its passages' gradients from ``bank``, or online."""
    spec = SPECS["regrad" if bank is not None else "regrad_online"]
    if bank is not None:
        checked_bank(bank, learner)
    rows = _weights(spec, learner, [task], [list(task.passage_ids)], bank, gamma)
    return {n: w[0] for n, w in rows.items()}


def predict_online(learner: Learner, items: Sequence[tasks.Task], *, gamma: float = 1.0,
                   batch_size: int | None = None) -> list[str]:
    """Predictions with on-the-fly gradients (no bank), for training's validation F1.

    The prompt follows the learner's ``blind_context`` (question only, or with its passages as in training).
    """
    spec = MethodSpec(base=False, context=not learner.preset.learner.blind_context, source="online")
    topk = max((len(t.passages) for t in items), default=0)
    rows = _run(spec, learner, items, gamma=gamma, topk=topk, batch_size=batch_size, nll=False, desc="validate")
    return [r["prediction"] for r in rows]


def score_rows(rows: Sequence[dict]) -> dict:
    """EM/F1/precision/recall ×100 (:func:`metrics.aggregate`), mean answer NLL and n of prediction rows."""
    out = metrics.aggregate(metrics.score(r["prediction"], r["answers"]) for r in rows)
    finite = [r["answer_nll"] for r in rows if r["answer_nll"] is not None and math.isfinite(r["answer_nll"])]
    out["nll"] = sum(finite) / len(finite) if finite else math.nan
    out["truncated_prompts"] = sum(1 for r in rows if r.get("truncated_passages"))   # passages cut to fit
    return out


# --- runs on disk ------------------------------------------------------------------------------------------

def load_tasks(dataset: str, split: str = "dev", topk: int = 3, limit: int | None = None) -> list[tasks.Task]:
    """Tasks of ``data/augmented/<dataset>/<split>.json`` (written by 02_augment), the first ``limit`` of them."""
    return tasks.load(dataset, split, topk, end=limit)


def method_files(run: str, dataset: str, method: str, evaluation: str | None = None) -> tuple:
    folder = paths.results_dir(run, evaluation) / dataset
    return folder / f"{method}.predictions.jsonl", folder / f"{method}.metrics.json"


def _settings(method: str, split: str, topk: int, gamma: float, limit: int | None, finished: bool | None,
              scheme: str = schemes.DEFAULT) -> dict:
    """What a method's results depend on (kept results must match); ``finished``: the run's training had;
    ``scheme``: the storage scheme of the bank it read (bank methods only)."""
    spec = SPECS[method]
    return {"split": split, "limit": limit, "topk": topk if spec.context or spec.source != "none" else None,
            "gamma": None if spec.source in ("none", "phi") else gamma,
            "scheme": schemes.parse(scheme).name if spec.source == "bank" else None,
            "run_finished": None if spec.base else finished}


def _run_finished(run: str, learner) -> bool | None:
    """Whether the run answering had finished training: as loaded, else as on disk (None: no such run)."""
    loaded = learner.learner if isinstance(learner, _LearnerOnce) else learner
    if isinstance(loaded, Learner) and loaded.run_finished is not None:
        return loaded.run_finished
    return run_finished(run) if paths.output_dir(run).is_dir() else None


class _LearnerOnce:
    """Loads ``Learner.from_run(run, device)`` on first use only (nothing to compute: nothing loaded)."""

    def __init__(self, run: str, device: str, learner: Learner | None = None, allow_unfinished: bool = False):
        self.run, self.device, self.learner, self.allow_unfinished = run, device, learner, allow_unfinished

    def __call__(self) -> Learner:
        if self.learner is None:
            self.learner = Learner.from_run(self.run, self.device, self.allow_unfinished)
        return self.learner


def _finished(run: str, dataset: str, method: str, settings: dict, evaluation: str | None = None) -> dict | None:
    """Scores of a finished :func:`evaluate` of ``method`` with exactly these settings, else None."""
    file = method_files(run, dataset, method, evaluation)[1]
    saved = _read_metrics(file) if file.exists() else {}
    if not saved or any(saved.get(k) != v for k, v in settings.items()):
        return None
    return {k: saved[k] for k in ("em", "f1", "precision", "recall", "nll", "n")}


def default_gamma(run: str) -> float:
    """The run's ``learner.gamma`` (its saved ``learner_config.json``): the gamma used when none is given."""
    return config.load_preset(trained_state(run, allow_unfinished=True).parent).learner.gamma   # only its config


@params.typed
@runlock.writer("05_evaluate")
def evaluate(run: str, dataset: str, methods: Sequence[str], *, split: str = "dev", topk: int = 3,
             gamma: float | None = None, limit: int | None = None, device: str = "cpu", overwrite: bool = False,
             learner: Learner | Callable[[], Learner] | None = None, bank=None,
             evaluation: str | None = None, allow_unfinished: bool = False,
             scheme: str = schemes.DEFAULT) -> dict[str, dict]:
    """Evaluate ``methods`` on one dataset: ``{method: metrics}``; writes predictions, metrics and summary.csv.

    A method whose ``metrics.json`` already exists with the same settings is kept (``status: "kept"``), so a
    crashed evaluation resumes method by method; ``overwrite=True`` recomputes it. ``learner``/``bank`` reuse
    objects already loaded (default: ``Learner.from_run(run, device)`` and the ``scheme`` bank of 04_encode); a
    bank passed in is checked against the learner like one opened here, and its scheme is the one recorded.
    ``gamma=None`` is the run's ``learner.gamma``. ``evaluation`` names an evaluation kept beside the run's main
    results (``results/<run>/evaluations/<evaluation>/``), e.g. to try other settings without touching finished ones.
    A run whose training did not finish is refused unless ``allow_unfinished=True`` (recorded as
    ``run_finished`` in ``metrics.json``).
    """
    methods = check_methods(methods)
    gamma = default_gamma(run) if gamma is None else gamma
    config.check_number(gamma, "gamma", allow_zero=True)
    get_learner = _loader(run, device, learner, allow_unfinished)
    finished = _run_finished(run, get_learner)
    if bank is not None:
        scheme = _require_bank(bank).scheme.name
    out, todo = distributed.on_main(_plan, run, dataset, methods, split, topk, gamma, limit, overwrite, evaluation,
                                    finished, scheme)
    if todo:
        items = load_tasks(dataset, split, topk, limit)
        current = get_learner()
        current.require_finished(allow_unfinished)
        if bank is None and needs_bank(todo):
            from . import bank as bank_module
            bank = bank_module.open_bank(topk, run, dataset, split, scheme, learner=current)
        for method in todo:
            rows = run_method(method, current, items, bank=bank if SPECS[method].source == "bank" else None,
                              gamma=gamma, topk=topk)
            out[method] = distributed.on_main(_write_method, run, dataset, method, rows, current, split, topk, gamma,
                                              limit, finished, evaluation, scheme)
    distributed.on_main(merge_csv, paths.results_dir(run, evaluation) / "summary.csv", SUMMARY_FIELDS,
                        [{"dataset": dataset, "method": m, **{k: out[m][k] for k in SUMMARY_FIELDS[2:]}}
                         for m in methods], key=("dataset", "method"))
    return out


def _plan(run, dataset, methods, split, topk, gamma, limit, overwrite, evaluation,
          finished, scheme=schemes.DEFAULT) -> tuple[dict[str, dict], list]:
    """(results kept from finished methods, the methods to compute); refuses results of other settings."""
    out: dict[str, dict] = {}
    todo = []
    for method in methods:
        _, metrics_file = method_files(run, dataset, method, evaluation)
        if metrics_file.exists() and not overwrite:
            saved = _read_metrics(metrics_file)
            wanted = _settings(method, split, topk, gamma, limit, finished, scheme)
            # results written before run_finished was recorded count as matching on it
            found = {k: saved.get(k, wanted[k] if k == "run_finished" else None) for k in wanted}
            if found != wanted:
                raise FileExistsError(f"{paths.relative(metrics_file)} was computed with {found}, not {wanted}: "
                                      "pass overwrite=True (05_evaluate: overwrite = True) to recompute it, or "
                                      "name this evaluation (evaluation='...') to keep both")
            log.info("%s/%s: kept the existing results (overwrite=False)", dataset, method)
            out[method] = {**saved, "status": "kept"}
        else:
            todo.append(method)
    return out, todo


def _write_method(run, dataset, method, rows, learner, split, topk, gamma, limit, finished, evaluation=None,
                  scheme=schemes.DEFAULT) -> dict:
    predictions_file, metrics_file = method_files(run, dataset, method, evaluation)
    scores = score_rows(rows)
    settings = {"run": run, "dataset": dataset, "method": method, "evaluation": evaluation,
                "preset": learner.preset.to_dict(), "meta_hash": learner.meta_hash(), "device": str(learner.device)}
    result = {**scores, **_settings(method, split, topk, gamma, limit, finished, scheme), "method": method,
              "dataset": dataset, "provenance": artifacts.provenance(settings)}
    artifacts.write_jsonl(predictions_file, [{**r, "answer_nll": _json_number(r["answer_nll"])} for r in rows])
    artifacts.write_json(metrics_file, {**result, "nll": _json_number(result["nll"])})   # last: marks it done
    log.info("%s/%s: EM %.1f F1 %.1f NLL %.3f (n=%d)", dataset, method, scores["em"], scores["f1"], scores["nll"],
             scores["n"])
    return {**result, "status": "computed"}


def _read_metrics(file: Path) -> dict:
    """A ``metrics.json``; its null NLL (no finite answer NLL) read back as NaN."""
    saved = artifacts.read_json(file)
    return {**saved, "nll": math.nan if saved.get("nll") is None else saved["nll"]}


def _json_number(value: float | None) -> float | None:
    """A score for strict JSON: a NaN or inf (no finite answer NLL) is written as null."""
    return value if value is not None and math.isfinite(value) else None


def _loader(run: str, device: str, learner, allow_unfinished: bool = False) -> Callable[[], Learner]:
    if callable(learner) and not isinstance(learner, Learner):
        return learner
    return _LearnerOnce(run, device, learner, allow_unfinished)


def evaluate_all(run: str, datasets: Sequence[str], methods: Sequence[str], *, device: str = "cpu",
                 learner: Learner | Callable[[], Learner] | None = None, allow_unfinished: bool = False,
                 **kwargs) -> list[dict]:
    """:func:`evaluate` for every dataset, loading the learner at most once; summary.csv rows of these datasets."""
    get_learner = _loader(run, device, learner, allow_unfinished)
    for dataset in datasets:
        evaluate(run, dataset, methods, device=device, learner=get_learner, allow_unfinished=allow_unfinished,
                 **kwargs)
    return distributed.on_main(lambda: [r for r in summary(run, kwargs.get("evaluation"))
                                        if r["dataset"] in set(datasets)])


def summary(run: str, evaluation: str | None = None) -> list[dict]:
    """Rows of ``results/<run>/summary.csv`` (numbers as floats, n as int), or of a named evaluation's."""
    return read_csv(paths.results_dir(run, evaluation) / "summary.csv")


@params.typed
@runlock.writer("05_evaluate")
def sweep(run: str, dataset: str, *, gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0), topks: Sequence[int] = (3,),
          method: str = "regrad", split: str = "dev", limit: int | None = None, device: str = "cpu",
          overwrite: bool = False, learner: Learner | Callable[[], Learner] | None = None,
          evaluation: str | None = None, allow_unfinished: bool = False,
          scheme: str = schemes.DEFAULT) -> list[dict]:
    """Scores of ``method`` for every (gamma, topk); rows merged into ``results/<run>/sweeps.csv``, returned.

    Points already in sweeps.csv are kept unless ``overwrite``. Each top-k reads its own bank
    (``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>``). An unfinished run needs ``allow_unfinished=True``.
    """
    check_methods([method])
    for i, g in enumerate(gammas):
        config.check_number(g, f"gammas[{i}]", allow_zero=True)
    get_learner = _loader(run, device, learner, allow_unfinished)
    finished = _run_finished(run, get_learner)
    file = paths.results_dir(run, evaluation) / "sweeps.csv"
    stored_as = schemes.parse(scheme).name if SPECS[method].source == "bank" else ""
    plan = distributed.on_main(_sweep_plan, run, dataset, method, gammas, topks, split, limit, overwrite, evaluation,
                               finished, scheme)
    new = []
    for topk, reused in zip(topks, plan):
        points = list(reused)
        todo = [g for g in points if reused[g] is None]
        if todo:
            current, store = get_learner(), None
            current.require_finished(allow_unfinished)
            items = load_tasks(dataset, split, topk, limit)
            if SPECS[method].source == "bank":
                from . import bank as bank_module
                store = bank_module.open_bank(topk, run, dataset, split, scheme, learner=current)
            for gamma in todo:
                reused[gamma] = score_rows(run_method(method, current, items, bank=store, gamma=gamma, topk=topk))
        new += [{"dataset": dataset, "method": method, "gamma": g, "topk": int(topk), "scheme": stored_as,
                 **reused[g]} for g in points]
    if new:
        distributed.on_main(merge_csv, file, SWEEP_FIELDS, new, key=("dataset", "method", "gamma", "topk", "scheme"))
    wanted = {(float(g), int(k)) for g in gammas for k in topks}
    return distributed.on_main(lambda: [r for r in read_csv(file) if r["dataset"] == dataset and r["method"] == method
                                        and (r["gamma"], r["topk"]) in wanted and (r.get("scheme") or "") == stored_as]
                               if file.exists() else [])


def _sweep_plan(run, dataset, method, gammas, topks, split, limit, overwrite, evaluation, finished,
                scheme=schemes.DEFAULT) -> list[dict]:
    """Per top-k: ``{gamma: scores of a finished evaluation with these settings, or None}`` for the points not
    yet in sweeps.csv (all points with ``overwrite``); points of another bank scheme do not count."""
    file = paths.results_dir(run, evaluation) / "sweeps.csv"
    stored_as = schemes.parse(scheme).name if SPECS[method].source == "bank" else ""
    done = {(r["dataset"], r["method"], float(r["gamma"]), int(r["topk"]), r.get("scheme") or "")
            for r in read_csv(file)} if file.exists() and not overwrite else set()
    plan = []
    for topk in topks:
        points = [float(g) for g in gammas if (dataset, method, float(g), int(topk), stored_as) not in done]
        reused = {g: _finished(run, dataset, method, _settings(method, split, topk, g, limit, finished, scheme),
                               evaluation) for g in points}
        if 0.0 in reused and reused[0.0] is None and SPECS[method].source != "none" and not SPECS[method].context:
            # gamma 0 is no update at all: exactly no_update's answers (tested), so its finished results serve
            reused[0.0] = _finished(run, dataset, "no_update", _settings("no_update", split, topk, 0.0, limit,
                                                                         finished, scheme), evaluation)
        plan.append(reused)
    return plan


def sweep_all(run: str, datasets: Sequence[str], *, gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
              topks: Sequence[int] = (3,), device: str = "cpu", learner: Learner | Callable[[], Learner] | None = None,
              allow_unfinished: bool = False, **kwargs) -> list[dict]:
    """:func:`sweep` for every dataset, loading the learner at most once (nothing when ``gammas`` is empty)."""
    get_learner = _loader(run, device, learner, allow_unfinished)
    return [row for dataset in datasets
            for row in sweep(run, dataset, gammas=gammas, topks=topks, device=device, learner=get_learner,
                             allow_unfinished=allow_unfinished, **kwargs)]


# --- the notebook's helpers ------------------------------------------------------------------------------------

@dataclass
class EvaluateSettings:
    """05_evaluate's parameters, validated before anything is computed; ``learner`` loads the run once, lazily."""
    run: str
    datasets: list[str]
    methods: list[str]
    split: str = "dev"
    topk: int = 3
    gamma: float | None = None         # None: the run's learner.gamma
    gammas: list[float] = field(default_factory=list)
    sweep_datasets: list[str] | None = None   # which evaluated datasets get the gamma sweep (None: all)
    limit: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    preset: str | None = None          # informational: the run's saved configs are authoritative
    evaluation: str | None = None      # a name: results/<run>/evaluations/<evaluation>/ beside the main results
    allow_unfinished: bool = False     # True: evaluate a run whose training did not finish
    scheme: str = schemes.DEFAULT      # the bank regrad, regrad_icl, shift and the sweep read
    frontier_schemes: list[str] = field(default_factory=list)   # regrad also on these banks (frontier.py)

    def __post_init__(self) -> None:
        params.check_fields(self)
        self.datasets = [self.datasets] if isinstance(self.datasets, str) else list(self.datasets)
        self.methods = check_methods(self.methods)
        self.scheme = schemes.parse(self.scheme).name
        if isinstance(self.frontier_schemes, str):
            self.frontier_schemes = [self.frontier_schemes]
        self.frontier_schemes = list(dict.fromkeys(schemes.parse(s).name for s in self.frontier_schemes))
        if not self.datasets or not self.methods:
            raise ValueError(f"datasets={self.datasets} and methods={self.methods} must name at least one each")
        trained_state(self.run, self.allow_unfinished)    # every step needs the (finished) run
        self.gamma = default_gamma(self.run) if self.gamma is None else self.gamma
        if self.topk < 1:
            raise ValueError(f"topk={self.topk} must be >= 1")
        config.check_number(self.gamma, "gamma", allow_zero=True)
        for i, g in enumerate(self.gammas):
            config.check_number(g, f"gammas[{i}]", allow_zero=True)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be None (every question) or >= 1")
        # the sweep runs on the evaluated datasets among sweep_datasets (the demo sweeps the probe only)
        self.sweep_datasets = list(self.datasets) if self.sweep_datasets is None else \
            [d for d in self.datasets if d in set(self.sweep_datasets)]
        paths.results_dir(self.run, self.evaluation)   # checks the name
        from . import bank

        banks = ([self.scheme] if needs_bank(self.methods) or self.gammas else []) + self.frontier_schemes
        for dataset in self.datasets:
            tasks.augmented_path(dataset, self.split)
            for scheme in dict.fromkeys(banks):   # opened (structure, shard headers) now: refused before any work
                bank.open_bank(self.topk, self.run, dataset, self.split, scheme).close()
        self.learner = _LearnerOnce(self.run, self.device, allow_unfinished=self.allow_unfinished)


def run(settings: EvaluateSettings) -> dict[str, list[dict]]:
    """05_evaluate's computation: every method on every dataset (``summary``), then the gamma sweep (``sweeps``)."""
    common = dict(split=settings.split, limit=settings.limit, device=settings.device, overwrite=settings.overwrite,
                  learner=settings.learner, evaluation=settings.evaluation, allow_unfinished=settings.allow_unfinished,
                  scheme=settings.scheme)
    rows = evaluate_all(settings.run, settings.datasets, settings.methods, topk=settings.topk, gamma=settings.gamma,
                        **common)
    return {"summary": rows, "sweeps": sweep_all(settings.run, settings.sweep_datasets, gammas=settings.gammas,
                                                 topks=[settings.topk], **common)}


def predictions(run: str, dataset: str, method: str, evaluation: str | None = None) -> list[dict]:
    """Rows of ``results/<run>/<dataset>/<method>.predictions.jsonl`` (or of a named evaluation)."""
    file = method_files(run, dataset, method, evaluation)[0]
    if not file.exists():
        raise FileNotFoundError(f"{paths.relative(file)} not found: it is written by 05_evaluate")
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def examples(run: str, dataset: str, methods: Sequence[str], n: int = 5, evaluation: str | None = None) -> list[dict]:
    """The first ``n`` questions with their gold answers and every method's prediction, side by side."""
    by_method = {m: predictions(run, dataset, m, evaluation)[:n] for m in check_methods(methods)}
    first = next(iter(by_method.values()))
    return [{"question": r["question"], "gold": r["answers"][0], **{m: rows[i]["prediction"]
             for m, rows in by_method.items()}} for i, r in enumerate(first)]


# --- CSV tables -----------------------------------------------------------------------------------------------

def read_csv(file: Path) -> list[dict]:
    """Rows of summary.csv / sweeps.csv: dataset, method and scheme as str, n and topk as int, the rest as float."""
    if not file.exists():
        raise FileNotFoundError(f"{paths.relative(file)} not found: it is written by 05_evaluate")
    with file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kinds = {"dataset": str, "method": str, "scheme": str, "n": int, "topk": int}
    return [{k: kinds.get(k, float)(v) for k, v in r.items()} for r in rows]


def merge_csv(file: Path, fields: Sequence[str], rows: Sequence[dict], key: Sequence[str]) -> Path:
    """Insert or replace ``rows`` (matched on ``key``) in a CSV with header ``fields``; atomic, sorted by key."""
    old = read_csv(file) if file.exists() else []
    def key_of(r):   # rows of an older file may lack a key field
        return tuple("" if r.get(k) is None else r[k] for k in key)

    merged = {key_of(r): r for r in old}
    merged.update({key_of(r): r for r in rows})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for k in sorted(merged):
        writer.writerow({f: _cell(merged[k].get(f)) for f in fields})
    return artifacts.write_text(file, text.getvalue())


def _cell(value):
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def table(rows: Sequence[dict], fields: Sequence[str] = SUMMARY_FIELDS) -> str:
    """A fixed-width text table of summary or sweep rows, for the notebook."""
    cells = [[str(f) for f in fields]] + [[f"{r[f]:.2f}" if isinstance(r[f], float) else str(r[f]) for f in fields]
                                          for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(fields))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in range(len(fields)))
                     for c in cells)
