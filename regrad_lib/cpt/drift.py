"""Weight drift and forgetting, measured on a model's persistent weights (the cpt baseline against ReGrad).

The *persistent* weights are what stays in the model between questions, a :class:`~regrad_lib.core.learner.Learner`'s
``model`` and ``phi``: the base model (``phi`` zero), the meta-trained run (ReGrad answers every question from it and
reverts each update), or what continual post-training left (:mod:`regrad_lib.cpt.continual`). Measured after every chunk
of a CPT stream and once for the base and the meta-trained weights (method.md, "Continual post-training and drift"):

(a) general text: the mean over a fixed slice of held-out corpus passages of each passage's mean token NLL, each
    formatted and cut as the bank does (``passage_format``, document start, ``bank_context_len``). The slice is
    ``general_passages`` passages that no augmented file (any dataset, any split) retrieves, one per article (title)
    in file order before any article gives a second, so one long article cannot fill it; its standard error is
    clustered by article (:func:`regrad_lib.reporting.effects.clustered_se`). :func:`check_disjoint` checks it against
    every stream, by id and by text;
(b) general questions: closed-book answer accuracy, F1, EM and answer NLL (the harness, the run's prompt frame) on
    ``general_questions`` training rows of ``general_datasets``, taken in file order, one dataset after the other in
    turn, leaving out the questions meta-training took a step on or validated on. Never dev questions, and never
    chosen by whether the base model answers them (a set of base successes can only get worse, and its near ties
    flip);
(c) ‖Δθ‖: the Frobenius norm of the change of the effective weights (each LoRA merged as ``s·B·A``, plus every base
    weight that moved) from the weights at the stream's start, relative to ‖θ‖ (every base weight) and to the norm
    of the base weights of the trained modules (the LoRA's target modules; every weight for ``full``);
(d) knowledge: answer accuracy, EM, F1 and answer NLL of the injected knowledge's questions answered so far
    (:func:`scores`).

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

SELECTION = "file order, datasets in turn, meta-training's questions left out; passages one per article first"


@dataclass
class GeneralSet:
    """What general ability is measured on: held-out passages (id, title, text), general questions (closed book),
    the settings they were chosen with (``selection``: how many questions each dataset gave, how many meta-training
    questions were left out), ‖θ‖, the norm of the LoRA target modules' base weights (``lora_norm``) and the measures
    at the base (``base``) and meta-trained (``meta``) weights."""
    passages: list[tuple[str, str, str]]
    questions: list[task_batches.Task]
    settings: dict
    theta_norm: float
    points: dict[str, dict]
    selection: dict = dataclasses.field(default_factory=dict)
    lora_norm: float | None = None

    def to_json(self) -> dict:
        return {"settings": self.settings, "selection": self.selection, "theta_norm": self.theta_norm,
                "lora_norm": self.lora_norm, "points": self.points,
                "passages": [{"id": i, "title": t, "text": x} for i, t, x in self.passages],
                "questions": [{**t.extra, "question": t.question, "answers": list(t.answers)} for t in self.questions]}

    @classmethod
    def from_json(cls, data: dict) -> GeneralSet:
        questions = [task_batches.Task(i, q["question"], tuple(q["answers"]), extra={k: v for k, v in q.items()
                                                                           if k not in ("question", "answers")})
                     for i, q in enumerate(data["questions"])]
        return cls([(p["id"], p["title"], p["text"]) for p in data["passages"]], questions, data["settings"],
                   data["theta_norm"], data["points"], data["selection"], data.get("lora_norm"))

    @property
    def articles(self) -> list[str]:
        """Each held-out passage's article (its title; the id where it has none): the clusters of its SE."""
        return [t or i for i, t, _ in self.passages]


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
    """``n`` passages of ``corpus_path`` whose id is not in ``excluded``, (id, title, text): the first passage of
    each article (title) in file order, and only when the corpus has fewer than ``n`` articles the second passages,
    then the third, ... (a long article at the file's start cannot fill the slice)."""
    first: list[tuple[str, str, str]] = []
    later: list[tuple[int, int, tuple[str, str, str]]] = []       # (rank in its article, file order, passage)
    seen: dict[str, int] = {}
    for p in corpus.read(corpus_path):
        if p.id in excluded or not p.text.strip():
            continue
        article = p.title or p.id
        rank = seen.get(article, 0)
        seen[article] = rank + 1
        if rank == 0:
            first.append((p.id, p.title, p.text))
            if len(first) == n:
                return first
        elif len(later) < n:          # enough to fill the slice whatever the corpus holds (bounded memory)
            later.append((rank, len(later), (p.id, p.title, p.text)))
    out = first + [p for _, _, p in sorted(later)][:n - len(first)]
    if len(out) < n:
        raise ValueError(f"{corpus_path}: only {len(out)} passages are retrieved by no augmented file, but "
                         f"general_passages = {n} (cpt_config.json): lower it or give a larger general_corpus")
    return out


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
    """Answer accuracy, EM and F1 (×100), the mean finite answer NLL of harness rows, and n (None when there is no
    row)."""
    if not rows:
        return {"acc": None, "em": None, "f1": None, "nll": None, "n": 0}
    scored = [metrics.score(r["prediction"], r["answers"]) for r in rows]
    nll = [r["answer_nll"] for r in rows if r["answer_nll"] is not None and math.isfinite(r["answer_nll"])]
    return {**{k: 100.0 * sum(s[k] for s in scored) / len(scored) for k in ("acc", "em", "f1")},
            "nll": sum(nll) / len(nll) if nll else None, "n": len(rows)}


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


def general_questions(datasets: Sequence[str], files: dict[str, str], excluded: set,
                      n: int) -> tuple[list[task_batches.Task], dict[str, int]]:
    """``n`` training questions of ``datasets`` outside ``excluded``: each dataset's file order, the datasets in turn
    (one question each, a dataset that runs out drops out), whatever the base model answers; (tasks, how many each
    dataset gave). Fewer than ``n`` when the files hold fewer (logged)."""
    pools = {d: [dataclasses.replace(t, extra={"dataset": d, "test_id": t.test_id})
                 for t in task_batches.load(d, files[d], 0) if (d, t.test_id) not in excluded] for d in datasets}
    chosen: list[task_batches.Task] = []
    depth = 0
    while len(chosen) < n and any(depth < len(p) for p in pools.values()):
        for d in datasets:
            if depth < len(pools[d]) and len(chosen) < n:
                chosen.append(dataclasses.replace(pools[d][depth], test_id=len(chosen)))
        depth += 1
    if len(chosen) < n:
        log.warning("only %d general questions in %s outside meta-training's, general_questions = %d",
                    len(chosen), {d: files[d] for d in datasets}, n)
    return chosen, {d: sum(1 for t in chosen if t.extra["dataset"] == d) for d in datasets}


# --- (c) the size of the change -------------------------------------------------------------------------------

def zero_phi(phi: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoRA weights that change nothing (B = 0 gives an exactly zero update): the base model as a learner."""
    return {n: torch.zeros_like(p.detach()) for n, p in phi.items()}


def base_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not n.endswith((".lora_A", ".lora_B"))]


def theta_norm(model: torch.nn.Module) -> float:
    """‖θ‖: the Frobenius norm of every base weight (LoRA excluded), in float64."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for _, p in base_parameters(model)))


def lora_modules_norm(model: torch.nn.Module) -> float:
    """The Frobenius norm of the base weights of the modules the LoRA adapts (what a LoRA's ‖Δθ‖ changes), float64."""
    return math.sqrt(sum(float(m.base.weight.detach().double().pow(2).sum()) for m in lora.modules(model).values()))


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
    """The general measures of per-passage NLLs and general-question rows: means (acc, EM, F1 ×100; NLLs in nats),
    n and the values themselves."""
    asked = scores(rows)
    scored = [metrics.score(r["prediction"], r["answers"]) for r in rows]
    return {"general_text_nll": sum(text) / len(text), "general_acc": asked["acc"], "general_em": asked["em"],
            "general_f1": asked["f1"], "general_nll": asked["nll"], "general_n": asked["n"],
            "general_text_nlls": list(text), "general_correct": [s["em"] for s in scored],
            "general_accurate": [s["acc"] for s in scored], "general_f1s": [s["f1"] for s in scored],
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
                "general_questions": cfg.general_questions, "datasets": list(datasets), "selection": SELECTION,
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
    questions, per_dataset = general_questions(datasets, files, excluded, cfg.general_questions)
    passages = held_out_passages(corpus_path, cfg.general_passages, augmented_passage_ids())
    base = dataclasses.replace(learner, phi=zero_phi(learner.phi))
    general = GeneralSet(passages, questions, settings, theta_norm(learner.model), {},
                         {"per_dataset": per_dataset, "meta_trained_left_out": len(excluded),
                          "articles": len(set(t or i for i, t, _ in passages))}, lora_modules_norm(learner.model))
    general.points["base"] = {**general_measures(base, general), "delta_from_base": 0.0}
    general.points["meta"] = {**general_measures(learner, general), "delta_from_base": delta_norm(learner, None)}
    distributed.on_main(result_files.write_general_set, run, evaluation, general.to_json())
    return general


def add_point(run: str, general: GeneralSet, name: str, learner: Learner, evaluation: str | None = None) -> GeneralSet:
    """The general measures of another set of persistent weights (e.g. a fine-tuned baseline's LoRA, ``learner.phi``)
    kept in the general set's file as point ``name`` (measured once; the set itself is unchanged)."""
    if name in general.points:
        return general
    general.points[name] = {**general_measures(learner, general), "delta_from_base": delta_norm(learner, None)}
    distributed.on_main(result_files.write_general_set, run, evaluation, general.to_json())
    return general
