"""Weight drift and forgetting, measured on a model's persistent weights (the cpt baseline against ReGrad).

The *persistent* weights are what stays in the model between questions, a :class:`~regrad_lib.core.learner.Learner`'s
``model`` and ``phi``: the base model (``phi`` zero), the meta-trained run (ReGrad answers every question from it and
reverts each update), or what continual post-training left (:mod:`regrad_lib.cpt.continual`). Measured after every chunk
of a CPT stream and once for the base and the meta-trained weights (method.md, "Drift and forgetting"):

(a) general text: the mean over a fixed slice of held-out corpus passages of each passage's mean token NLL, each
    formatted and cut as the bank does (``passage_format``, document start, ``bank_context_len``). The slice is the
    first ``general_passages`` passages of the corpus that no augmented file (any dataset, any split) retrieves,
    so it is never injected; :func:`check_disjoint` checks it against every stream, by id and by text;
(b) general questions: closed-book EM and answer NLL (the harness, the run's prompt frame) on the first
    ``general_questions`` training rows of ``general_datasets`` that the base model answers exactly, closed book,
    in file order; the questions meta-training took a step on or validated on are left out. Never dev questions;
(c) ‖Δθ‖: the Frobenius norm of the change of the effective weights (each LoRA merged as ``s·B·A``, plus every base
    weight that moved) from the weights at the stream's start; ‖Δθ‖/‖θ‖ with ‖θ‖ the base model's weights;
(d) knowledge: EM and answer NLL of the injected knowledge's questions answered so far (:func:`scores`).

:func:`general_set` chooses (a) and (b) once per run and evaluation (``results/<run>/drift/general_set.json``),
with the measures at the base and the meta-trained weights; :func:`fingerprint` is the bit-for-bit check of a
learner's persistent weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from regrad_lib import config
from regrad_lib.answering import harness
from regrad_lib.answering.specs import SPECS, MethodSpec
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import corpus, metrics
from regrad_lib.data.prompts import format_passage
from regrad_lib.io import artifacts, distributed, paths, result_files
from regrad_lib.training import train_data

log = logging.getLogger(__name__)

CANDIDATE_BATCH = 64       # general-question candidates answered at a time (selection stops once it has enough)


@dataclass
class GeneralSet:
    """What general ability is measured on: held-out passages (id, title, text), general questions (closed book),
    the settings they were chosen with (``selection``: how many candidates were asked, how many left out), ‖θ‖ and
    the measures at the base (``base``) and meta-trained (``meta``) weights."""
    passages: list[tuple[str, str, str]]
    questions: list[task_batches.Task]
    settings: dict
    theta_norm: float
    points: dict[str, dict]
    selection: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"settings": self.settings, "selection": self.selection, "theta_norm": self.theta_norm,
                "points": self.points,
                "passages": [{"id": i, "title": t, "text": x} for i, t, x in self.passages],
                "questions": [{**t.extra, "question": t.question, "answers": list(t.answers)} for t in self.questions]}

    @classmethod
    def from_json(cls, data: dict) -> GeneralSet:
        questions = [task_batches.Task(i, q["question"], tuple(q["answers"]), extra={k: v for k, v in q.items()
                                                                           if k not in ("question", "answers")})
                     for i, q in enumerate(data["questions"])]
        return cls([(p["id"], p["title"], p["text"]) for p in data["passages"]], questions, data["settings"],
                   data["theta_norm"], data["points"], data["selection"])


# --- (a) held-out general text ------------------------------------------------------------------------------

def augmented_passage_ids() -> set[str]:
    """Every passage id any augmented file retrieves (``data/augmented/*/*.json``, every dataset and split)."""
    out: set[str] = set()
    root = paths.augmented_dir("x").parent
    for file in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        records = artifacts.read_json(file)
        if isinstance(records, list):              # sidecars (<name>.meta.json) are objects
            out.update(str(p) for r in records for p in r.get("passage_ids", []))
    return out


def held_out_passages(corpus_path: str, n: int, excluded: set[str]) -> list[tuple[str, str, str]]:
    """The first ``n`` passages of ``corpus_path`` (file order) whose id is not in ``excluded``: (id, title, text)."""
    out: list[tuple[str, str, str]] = []
    for p in corpus.read(corpus_path):
        if p.id not in excluded and p.text.strip():
            out.append((p.id, p.title, p.text))
            if len(out) == n:
                return out
    raise ValueError(f"{corpus_path}: only {len(out)} passages are retrieved by no augmented file, but "
                     f"general_passages = {n} (cpt_config.json): lower it or give a larger general_corpus")


def check_disjoint(general: GeneralSet, injected: Sequence[tuple[str, str, str]], fmt: str, where: str) -> None:
    """Refuse a stream that would inject a held-out general passage (the same id or the same formatted text)."""
    ids = {p[0] for p in general.passages} & {p[0] for p in injected}
    held = {format_passage(t, x, fmt) for _, t, x in general.passages}
    same_text = [p[0] for p in injected if format_passage(p[1], p[2], fmt) in held]
    if ids or same_text:
        raise ValueError(f"{where}: the documents to inject include held-out general passages (ids "
                         f"{sorted(ids | set(same_text))[:5]}); general text must never be injected: choose another "
                         f"general_corpus or re-run 05 with overwrite=True to choose the general set again")


def text_nll(learner: Learner, passages: Sequence[tuple[str, str, str]], batch_size: int = 16) -> list[float]:
    """Each passage's mean token NLL (equation 1's ``L_LM``, cut at ``bank_context_len``) under the learner's
    persistent weights (its ``model`` with its ``phi``), forward only, at evaluation precision."""
    cfg = learner.preset.learner
    weights = {n: p.detach() for n, p in learner.phi.items()}
    out: list[float] = []
    with torch.no_grad(), lora.use(learner.model, weights), learner.autocast():
        for start in range(0, len(passages), batch_size):
            chunk = [(t, x) for _, t, x in passages[start:start + batch_size]]
            batch = task_batches.passage_batch(learner.tokenizer, chunk, cfg.bank_context_len, cfg.passage_format)
            out += regrad.token_losses(learner.model, batch.to(learner.device)).float().tolist()
    return out


# --- (b) general questions and (d) knowledge ------------------------------------------------------------------

def answer(learner: Learner, items: Sequence[task_batches.Task], spec: MethodSpec = SPECS["no_update"],
           desc: str = "drift") -> list[dict]:
    """Harness rows of ``items`` answered with the learner's persistent weights (its ``phi``, question only, by
    default)."""
    if not items:
        return []
    topk = max(len(t.passages) for t in items)
    return harness.answer(spec, learner, items, topk=topk, desc=desc)


def scores(rows: Sequence[dict]) -> dict:
    """EM (×100) and mean finite answer NLL of harness rows, and n (None when there is no row)."""
    if not rows:
        return {"em": None, "nll": None, "n": 0}
    em = [metrics.score(r["prediction"], r["answers"])["em"] for r in rows]
    nll = [r["answer_nll"] for r in rows if r["answer_nll"] is not None and math.isfinite(r["answer_nll"])]
    return {"em": 100.0 * sum(em) / len(em), "nll": sum(nll) / len(nll) if nll else None, "n": len(rows)}


def training_file(run: str, dataset: str) -> str:
    """The augmented file general-question candidates of ``dataset`` come from: the run's meta-training file when
    it trained on ``dataset`` (``train_request.json``), else ``train_all``."""
    request = paths.train_request_file(run)
    saved = artifacts.read_json(request) if request.is_file() else {"train_datasets": []}
    return saved["train_file"] if dataset in saved["train_datasets"] else "train_all"


def meta_trained(run: str) -> set[tuple[str, int]]:
    """(dataset, test_id) of every question 03_train took a step on or validated on; none when the run has no
    ``train_request.json`` (not made by 03_train)."""
    folder = paths.output_dir(run)
    if not paths.train_request_file(run).is_file():
        log.warning("%s has no %s: no question is known to be meta-trained on", paths.relative(folder),
                    paths.TRAIN_REQUEST)
        return set()
    request = artifacts.read_json(paths.train_request_file(run))
    args = config.load_preset(folder).train
    data = train_data.training_data(request["train_datasets"], request["train_file"], args)
    summary = paths.train_summary_file(run)
    steps = artifacts.read_json(summary)["steps"] if summary.is_file() else None    # unfinished: assume all
    taken = data.train if steps is None else train_data.stepped_tasks(data.train, args.seed, args.meta_batch_size,
                                                                       steps)
    return {(t.extra["dataset"], t.test_id) for t in [*data.validation, *taken]}


def select_questions(learner: Learner, datasets: Sequence[str], files: dict[str, str], excluded: set,
                     n: int) -> tuple[list[task_batches.Task], list[dict], int]:
    """The first ``n`` training questions (datasets in order, file order) the base model answers exactly, closed
    book, outside ``excluded``: (tasks, their base rows, candidates answered)."""
    chosen: list[task_batches.Task] = []
    rows: list[dict] = []
    asked = 0
    for dataset in datasets:
        candidates = [dataclasses.replace(t, extra={"dataset": dataset, "test_id": t.test_id})
                      for t in task_batches.load(dataset, files[dataset], 0)
                      if (dataset, t.test_id) not in excluded]
        for start in range(0, len(candidates), CANDIDATE_BATCH):
            batch = candidates[start:start + CANDIDATE_BATCH]
            answered = answer(learner, batch, SPECS["closed_book"], desc=f"general questions ({dataset})")
            asked += len(batch)
            for task, row in zip(batch, answered):
                if metrics.score(row["prediction"], row["answers"])["em"] == 1.0 and len(chosen) < n:
                    chosen.append(dataclasses.replace(task, test_id=len(chosen)))
                    rows.append(row)
            if len(chosen) == n:
                return chosen, rows, asked
    return chosen, rows, asked


# --- (c) the size of the change -------------------------------------------------------------------------------

def zero_phi(phi: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA weights that change nothing (B = 0 gives an exactly zero update): the base model as a learner."""
    return {n: torch.zeros_like(p.detach()) for n, p in phi.items()}


def base_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not n.endswith((".lora_A", ".lora_B"))]


def theta_norm(model: torch.nn.Module) -> float:
    """‖θ‖: the Frobenius norm of every base weight (LoRA excluded), in float64."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for _, p in base_parameters(model)))


def delta_norm(now: Learner, start: Learner | None) -> float:
    """‖Δθ‖ of the effective weights from ``start`` to ``now`` (None: the base model): every base weight's change
    plus each LoRA's merged change ``s·(B A − B₀ A₀)``, in float64."""
    total = 0.0
    start_model = now.model if start is None else start.model
    if start_model is not now.model:
        for (name, p), (name0, p0) in zip(base_parameters(now.model), base_parameters(start_model)):
            if name != name0:
                raise ValueError(f"models differ in layout: {name} against {name0}")
            total += float((p.detach().double() - p0.detach().double()).pow(2).sum())
    for name, module in lora.modules(now.model).items():
        merged = now.phi[f"{name}.lora_B"].detach().double() @ now.phi[f"{name}.lora_A"].detach().double()
        if start is not None:
            merged = merged - (start.phi[f"{name}.lora_B"].detach().double() @
                               start.phi[f"{name}.lora_A"].detach().double())
        total += float((module.scaling * merged).pow(2).sum())
    return math.sqrt(total)


def fingerprint(learner: Learner) -> str:
    """sha256 of every persistent tensor's bytes (the model's state dict, the learner's ``phi`` and ``alpha``):
    equal before and after an evaluation means not one bit changed."""
    h = hashlib.sha256()
    named = [*learner.model.state_dict().items(), *((f"phi.{n}", p) for n, p in learner.phi.items()),
             *((f"alpha.{n}", v) for n, v in learner.alpha.values.items())]
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- the measures and the general set ------------------------------------------------------------------------

def general_measures(learner: Learner, general: GeneralSet) -> dict:
    """(a) and (b) at the learner's persistent weights, with the per-passage and per-question values (for paired
    comparisons between two sets of weights)."""
    return general_summary(text_nll(learner, general.passages), answer(learner, general.questions,
                                                                       desc="general questions"))


def general_summary(text: Sequence[float], rows: Sequence[dict]) -> dict:
    """The general measures of per-passage NLLs and general-question rows: means, n and the values themselves."""
    asked = scores(rows)
    return {"general_text_nll": sum(text) / len(text), "general_em": asked["em"], "general_nll": asked["nll"],
            "general_n": asked["n"], "general_text_nlls": list(text),
            "general_correct": [metrics.score(r["prediction"], r["answers"])["em"] for r in rows],
            "general_answer_nlls": [r["answer_nll"] if r["answer_nll"] is not None and math.isfinite(r["answer_nll"])
                                    else None for r in rows]}


def general_set(run: str, learner: Learner, *, corpus_path: str, datasets: Sequence[str],
                evaluation: str | None = None, overwrite: bool = False) -> GeneralSet:
    """The held-out passages and general questions of this run (chosen once, kept in ``results/<run>/drift/``),
    with ‖θ‖ and the measures at the base and the meta-trained weights. Kept when chosen with the same settings;
    chosen again for other settings only with ``overwrite``."""
    cfg = learner.preset.cpt
    file = paths.general_set_file(run, evaluation)
    settings = {"corpus": paths.relative(paths.resolve(corpus_path)), "general_passages": cfg.general_passages,
                "general_questions": cfg.general_questions, "datasets": list(datasets),
                "model": learner.preset.learner.model_name_or_path, "meta_hash": learner.meta_hash(),
                "learner": asdict(learner.preset.learner), "generation": asdict(learner.preset.generation)}
    saved = GeneralSet.from_json(result_files.read_general_set(run, evaluation)) if file.is_file() else None
    if saved is not None and saved.settings == settings:
        return saved
    if saved is not None and not overwrite:
        changed = sorted(k for k in settings if saved.settings.get(k) != settings[k])
        raise FileExistsError(f"{paths.relative(file)} was chosen with other settings ({', '.join(changed)}): pass "
                              "overwrite=True (05_evaluate: overwrite = True) to choose it again, or name this "
                              "evaluation (evaluation='...')")
    excluded = meta_trained(run)
    files = {d: training_file(run, d) for d in datasets}
    questions, base_rows, asked = select_questions(learner, datasets, files, excluded, cfg.general_questions)
    if not questions:
        log.warning("the base model answers none of %d general-question candidates of %s: general EM is not "
                    "measured", asked, list(datasets))
    passages = held_out_passages(corpus_path, cfg.general_passages, augmented_passage_ids())
    base = dataclasses.replace(learner, phi=zero_phi(learner.phi))
    general = GeneralSet(passages, questions, settings, theta_norm(learner.model), {},
                         {"candidates": asked, "meta_trained_left_out": len(excluded)})
    general.points["base"] = {**general_summary(text_nll(base, passages), base_rows), "delta_from_base": 0.0}
    general.points["meta"] = {**general_measures(learner, general), "delta_from_base": delta_norm(learner, None)}
    distributed.on_main(result_files.write_general_set, run, evaluation, general.to_json())
    return general
