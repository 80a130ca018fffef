"""05_evaluate: ReGrad and its baselines through one harness (method.md "Baselines", equation 4).

The pieces, one module each (docs/design.md, "Layers"): :mod:`regrad_lib.answering.methods` (what each method is and the
LoRA weights it answers with), :mod:`regrad_lib.answering.harness` (prompts, batched decoding, answer NLL: the same for
every method), :mod:`regrad_lib.evaluation.results` (result files, what a re-run keeps, summary.csv) and
:mod:`regrad_lib.evaluation.sweeps` (the gamma sweep). This module runs them over datasets for the notebook: every
method on every dataset (resuming method by method), then the sweep.

Outputs (all atomic, results of a finished method are kept unless ``overwrite``): ``results/<run>/<dataset>/
<method>.predictions.jsonl`` and ``<method>.metrics.json``, ``results/<run>/summary.csv`` and ``sweeps.csv``.

With ``cpt`` or ``cpt_rag`` among the methods (the drift study): continual post-training on each dataset's documents
(:mod:`regrad_lib.cpt.continual`, drift measured after every chunk, ``results/<run>/<dataset>/cpt/``) on the general set
of :mod:`regrad_lib.cpt.drift` (``results/<run>/drift/``), and every method that updates the weights per question
(regrad, regrad_icl, regrad_online, shift) is checked to leave the persistent weights bit for bit as they were (sha256
of every tensor before and after its whole evaluation; ``persistent_unchanged`` in its ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from regrad_lib import config
from regrad_lib.answering.harness import run_method
from regrad_lib.answering.methods import require_bank
from regrad_lib.answering.specs import SPECS, check_methods, needs_bank
from regrad_lib.bank import schemes
from regrad_lib.core import task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.cpt import continual as cpt_module
from regrad_lib.cpt import drift
from regrad_lib.evaluation.learner_once import (
    LearnerOnce,
    default_gamma,
    finished_state,
    loader,
)
from regrad_lib.evaluation.results import plan, write_method
from regrad_lib.evaluation.sweeps import sweep_all
from regrad_lib.io import distributed, params, paths, runlock
from regrad_lib.io.result_files import SUMMARY_FIELDS, merge_table, read_table
from regrad_lib.io.run_state import trained_state
from regrad_lib.training import sft

__all__ = ["EvaluateSettings", "evaluate", "evaluate_all", "load_tasks", "run"]

log = logging.getLogger(__name__)


def load_tasks(dataset: str, split: str = "dev", topk: int = 3, limit: int | None = None,
               mixed: float = 0.0) -> list[task_batches.Task]:
    """Tasks of ``data/augmented/<dataset>/<split>.json`` (written by 02_augment), the first ``limit`` of them; with
    ``mixed`` > 0 the last ⌊topk·mixed⌋ passages of each are the next question's (:func:`tasks.mix`)."""
    return task_batches.load(dataset, split, topk, end=limit, mixed=mixed)


# long: its docstring documents every parameter of 05's call; the body is the plan, each method, the summary row
@params.typed
@runlock.writer("05_evaluate")
def evaluate(run: str, dataset: str, methods: Sequence[str], *, split: str = "dev", topk: int = 3,
             gamma: float | None = None, limit: int | None = None, device: str = "cpu", overwrite: bool = False,
             learner: Learner | Callable[[], Learner] | None = None, bank=None,
             evaluation: str | None = None, allow_unfinished: bool = False,
             scheme: str = schemes.DEFAULT, mixed: float = 0.0, cpt: dict | None = None,
             general_corpus: str = "data/sample/psgs_w100.tsv",
             general_datasets: Sequence[str] = ("popqa", "hotpotqa"), cpt_measure: str = "every") -> dict[str, dict]:
    """Evaluate ``methods`` on one dataset: ``{method: metrics}``; writes predictions, metrics and summary.csv.

    A method whose ``metrics.json`` already exists with the same settings is kept (``status: "kept"``), so a
    crashed evaluation resumes method by method; ``overwrite=True`` recomputes it. ``learner``/``bank`` reuse
    objects already loaded (default: ``Learner.from_run(run, device)`` and the ``scheme`` bank of 04_encode); a
    bank passed in is checked against the learner like one opened here, and its scheme is the one recorded.
    ``gamma=None`` is the run's ``learner.gamma``. ``evaluation`` names an evaluation kept beside the run's main
    results (``results/<run>/evaluations/<evaluation>/``), e.g. to try other settings without touching finished ones.
    A run whose training did not finish is refused unless ``allow_unfinished=True`` (recorded as
    ``run_finished`` in ``metrics.json``). ``mixed``: the mixed-documents ablation, every method that uses passages
    (in the prompt or as gradients) gets each question's passages with the last ⌊topk·mixed⌋ replaced by the next
    question's (recorded in ``metrics.json``; the bank must hold them: 04_encode with ``mixed`` at least this).
    ``cpt``: overrides of the run's ``cpt_config.json`` (None keeps a key); ``general_corpus`` and
    ``general_datasets``: where the drift study's general text and questions come from; ``cpt_measure``: the drift
    after every chunk (``"every"``) or after the stream's last only (``"end"``).
    """
    methods = check_methods(methods)
    gamma = default_gamma(run) if gamma is None else gamma
    config.check_number(gamma, "gamma", allow_zero=True)
    get_learner = loader(run, device, learner, allow_unfinished)
    finished = finished_state(run, get_learner)
    if bank is not None:
        scheme = require_bank(bank).scheme.name
    study = any(SPECS[m].weights == "cpt" for m in methods)       # the drift study: CPT against ReGrad
    cpt_cfg = cpt_module.resolve(run, cpt) if study else None
    cpt_settings = cpt_module.answer_settings(cpt_cfg, config.load_preset(
        trained_state(run, allow_unfinished=True).parent).train.seed) if study else None
    baselines = {m: sft.planned(run, m) for m in methods if SPECS[m].weights in ("sft", "rag_sft")}
    out, todo = distributed.on_main(plan, run, dataset, methods, split, topk, gamma, limit, overwrite, evaluation,
                                    finished, scheme, mixed, cpt_settings, baselines)
    if todo:
        items = load_tasks(dataset, split, topk, limit, mixed)
        current = get_learner()
        current.require_finished(allow_unfinished)
        if bank is None and needs_bank(todo):
            from regrad_lib.bank import reader as bank_module
            bank = bank_module.open_bank(topk, run, dataset, split, scheme, learner=current)
        post = None
        for method in todo:
            checks, answering = None, current
            if SPECS[method].weights == "cpt":
                if post is None:
                    cfg = current.preset.cpt if cpt_cfg is None else cpt_cfg
                    cpt_learner = dataclasses.replace(current, preset=dataclasses.replace(current.preset, cpt=cfg))
                    general = drift.general_set(run, cpt_learner, corpus_path=general_corpus,
                                                datasets=general_datasets, evaluation=evaluation, overwrite=overwrite)
                    post = cpt_module.post_train(run, dataset, cpt_learner, items, cfg=cfg, general=general,
                                                 split=split, topk=topk, limit=limit, evaluation=evaluation,
                                                 overwrite=overwrite, measure_at=cpt_measure)
                answering = post.learner
            elif method in baselines:        # fine-tuned on what meta-training used (trained once per run)
                answering, _ = sft.learner_for(run, method, current, overwrite=overwrite)
            before = drift.fingerprint(current) if study and SPECS[method].adapts else None
            if method == "cpt":          # the stream's last knowledge measure answered every question already
                rows = post.rows
            else:
                rows = run_method(method, answering, items, bank=bank if SPECS[method].reads_bank else None,
                                  gamma=gamma, topk=topk)
            if before is not None:
                checks = {"persistent_unchanged": _unchanged(current, before, method), "persistent_sha256": before}
            out[method] = distributed.on_main(write_method, run, dataset, method, rows, answering, split, topk,
                                              gamma, limit, finished, evaluation, scheme, mixed,
                                              cpt_settings if SPECS[method].weights == "cpt" else None, checks,
                                              baselines.get(method))
    distributed.on_main(merge_table, paths.summary_file(run, evaluation), SUMMARY_FIELDS,
                        [{"dataset": dataset, "method": m, **{k: out[m][k] for k in SUMMARY_FIELDS[2:]}}
                         for m in methods], key=("dataset", "method"))
    return out


def _unchanged(learner: Learner, before: str, method: str) -> bool:
    """True when the learner's persistent weights hash as ``before``; else an error (they must never change)."""
    after = drift.fingerprint(learner)
    if after != before:
        raise RuntimeError(f"{method} changed the persistent weights (sha256 {before[:12]} -> {after[:12]}): "
                           "every per-question update must be reverted")
    return True


def evaluate_all(run: str, datasets: Sequence[str], methods: Sequence[str], *, device: str = "cpu",
                 learner: Learner | Callable[[], Learner] | None = None, allow_unfinished: bool = False,
                 **kwargs) -> list[dict]:
    """:func:`evaluate` for every dataset, loading the learner at most once; summary.csv rows of these datasets."""
    get_learner = loader(run, device, learner, allow_unfinished)
    for dataset in datasets:
        evaluate(run, dataset, methods, device=device, learner=get_learner, allow_unfinished=allow_unfinished,
                 **kwargs)
    # 05's own reading, unchecked as when it merges the file (06's checked reader refuses a score that is no number)
    file = paths.summary_file(run, kwargs.get("evaluation"))
    return distributed.on_main(lambda: [r for r in read_table(file, SUMMARY_FIELDS) if r["dataset"] in set(datasets)])


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
    sweep_datasets: list[str] | None = None   # which evaluated datasets get the sweeps (None: all)
    limit: int | None = None
    device: str = "cpu"
    overwrite: bool = False
    preset: str | None = None          # informational: the run's saved configs are authoritative
    evaluation: str | None = None      # a name: results/<run>/evaluations/<evaluation>/ beside the main results
    allow_unfinished: bool = False     # True: evaluate a run whose training did not finish
    scheme: str = schemes.DEFAULT      # the bank regrad, regrad_icl, shift and the sweep read
    frontier_schemes: list[str] = field(default_factory=list)   # regrad also on these banks (frontier.py)
    mixed: float = 0.0                 # share of each question's top-k replaced by the next question's (ablation)
    mixed_sweep: list[float] = field(default_factory=list)      # regrad at these shares (gamma, topk fixed)
    topks: list[int] = field(default_factory=list)              # regrad at these top-k (gamma fixed)
    cpt_learning_rate: float | None = None   # methods cpt / cpt_rag: overrides of the run's cpt_config.json
    cpt_epochs_per_chunk: int | None = None
    cpt_chunks: int | None = None
    cpt_weights: str | None = None           # "lora", "phi" or "full"
    cpt_objective: str | None = None         # "raw" (passages only) or "replay" (also meta-training's QA examples)
    cpt_seed: int | None = None              # the stream's seed (None: the run's cpt_config.json, else the run's seed)
    general_corpus: str = "data/sample/psgs_w100.tsv"   # the drift study's held-out general text: a slice of it
    general_datasets: list[str] = field(default_factory=lambda: ["popqa", "hotpotqa"])  # general questions' rows

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
        self.mixed_sweep = [float(m) for m in self.mixed_sweep]
        self.topks = [int(k) for k in self.topks]
        if any(k < 1 for k in self.topks):
            raise ValueError(f"topks={self.topks}: each top-k must be >= 1")
        for m in [self.mixed, *self.mixed_sweep]:
            task_batches.mixed_count(self.topk, m)          # a share in [0, 1]
        # the sweep runs on the evaluated datasets among sweep_datasets (the demo sweeps the probe only)
        asked = self.sweep_datasets
        self.sweep_datasets = list(self.datasets) if asked is None else \
            [d for d in self.datasets if d in set(asked)]
        if (self.gammas or self.topks or self.mixed_sweep) and not self.sweep_datasets:
            log.warning("no sweep runs: none of datasets %s is in sweep_datasets %s; set sweep_datasets = None "
                        "(every evaluated dataset) or name yours", self.datasets, asked)
        paths.results_dir(self.run, self.evaluation)   # checks the name
        self.general_datasets = [self.general_datasets] if isinstance(self.general_datasets, str) else \
            list(self.general_datasets)
        if any(SPECS[m].weights in ("sft", "rag_sft") for m in self.methods):
            sft.check_inputs(self.run)
        if any(SPECS[m].weights == "cpt" for m in self.methods):     # the drift study's inputs, checked now
            cpt_module.resolve(self.run, self.cpt)
            if not paths.resolve(self.general_corpus).is_file():
                raise FileNotFoundError(f"general_corpus={self.general_corpus!r} not found: give the corpus whose "
                                        "held-out passages measure general text, e.g. data/sample/psgs_w100.tsv")
            for dataset in self.general_datasets:
                task_batches.augmented_path(dataset, drift.training_file(self.run, dataset))
        from regrad_lib.bank import reader

        sweeping = self.gammas or self.mixed_sweep or self.topks
        banks = ([self.scheme] if needs_bank(self.methods) or sweeping else []) + self.frontier_schemes
        for dataset in self.datasets:
            task_batches.augmented_path(dataset, self.split)
            for scheme in dict.fromkeys(banks):   # opened (structure, shard headers) now: refused before any work
                reader.open_bank(self.topk, self.run, dataset, self.split, scheme).close()
            if banks and banks[0] == self.scheme:
                self._check_banked(dataset)
        self.learner = LearnerOnce(self.run, self.device, allow_unfinished=self.allow_unfinished)


    def _check_banked(self, dataset: str) -> None:
        """Every passage the mixed ablation and the top-k sweep will read is in the bank serving it, or an error
        naming the 04_encode setting that banks it (before any answer is computed)."""
        from regrad_lib.bank import reader

        shares = dict.fromkeys([self.mixed, *self.mixed_sweep])
        needs = [(self.topk, m) for m in shares if task_batches.mixed_count(self.topk, m)]
        needs += [(k, self.mixed) for k in self.topks if k != self.topk]
        for topk, mixed in needs:
            served_by = reader.serving_topk(topk, self.run, dataset, self.split, self.scheme)
            wanted = {p for t in load_tasks(dataset, self.split, topk, self.limit, mixed) for p in t.passage_ids}
            with reader.open_bank(served_by, self.run, dataset, self.split, self.scheme) as stored:
                absent = sorted(p for p in wanted if p not in stored)
            if absent:
                raise ValueError(f"{dataset}: the bank offline/{served_by}/{self.run}/{dataset}/{self.split}_all/"
                                 f"{self.scheme} lacks {len(absent)} passage(s) that topk={topk}, mixed={mixed} reads "
                                 f"(e.g. {absent[:3]}): run 04_encode with topk={max(topk, served_by)} and mixed="
                                 f"{max([self.mixed, *self.mixed_sweep])} first")

    def replace(self, **changes) -> EvaluateSettings:
        """A copy with some parameters changed, validated again (nothing is loaded)."""
        return dataclasses.replace(self, **changes)

    @property
    def cpt(self) -> dict:
        """The notebook's overrides of the run's cpt_config.json (None: keep)."""
        return {"learning_rate": self.cpt_learning_rate, "epochs_per_chunk": self.cpt_epochs_per_chunk,
                "chunks": self.cpt_chunks, "weights": self.cpt_weights, "objective": self.cpt_objective,
                "seed": self.cpt_seed}


def run(settings: EvaluateSettings) -> dict[str, list[dict]]:
    """05_evaluate's computation: every method on every dataset (``summary``), then the sweeps of regrad on the
    ``sweep_datasets``: gamma (``sweeps``, at ``topk`` and ``mixed``), top-k (``topk_sweep``, at ``gamma``) and
    mixed-documents share (``mixed_sweep``, at ``gamma`` and ``topk``)."""
    common = dict(split=settings.split, limit=settings.limit, device=settings.device, overwrite=settings.overwrite,
                  learner=settings.learner, evaluation=settings.evaluation, allow_unfinished=settings.allow_unfinished,
                  scheme=settings.scheme)
    rows = evaluate_all(settings.run, settings.datasets, settings.methods, topk=settings.topk, gamma=settings.gamma,
                        mixed=settings.mixed, cpt=settings.cpt, general_corpus=settings.general_corpus,
                        general_datasets=settings.general_datasets, **common)
    sweep_on = settings.sweep_datasets
    return {"summary": rows,
            "sweeps": sweep_all(settings.run, sweep_on, gammas=settings.gammas, topks=[settings.topk],
                                mixes=[settings.mixed], **common),
            "topk_sweep": sweep_all(settings.run, sweep_on, gammas=[settings.gamma], topks=settings.topks,
                                    mixes=[settings.mixed], **common),
            "mixed_sweep": sweep_all(settings.run, sweep_on, gammas=[settings.gamma], topks=[settings.topk],
                                     mixes=settings.mixed_sweep, **common)}
