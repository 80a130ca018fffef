"""One harness for every method: the same prompts (:func:`prompts.build_prompt`), the same batched greedy decoding
with the newline stop rule (:mod:`regrad_lib.core.generation`) and the same answer extraction; only the weights
(:mod:`regrad_lib.answering.methods`) and whether the passages sit in the prompt differ.

A batch of questions runs with per-row adapted weights ``[batch, ...]`` (batched low-rank matmuls), never one
question at a time with weights copied in and out. Each row also gets ``answer_nll`` (scored from the prompt's KV
cache, right after the prefill that decoding uses): the mean token NLL of the first gold answer (label
`` answer`` + the template's end-of-turn token, :func:`prompts.answer_ids`, the same label as training's meta loss)
under that method's weights and prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

from tqdm.auto import tqdm

from regrad_lib.answering.methods import checked_bank, method_weights
from regrad_lib.answering.specs import SPECS, MethodSpec, check_methods
from regrad_lib.core import generation, lora, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import metrics, prompts
from regrad_lib.io import distributed

log = logging.getLogger(__name__)


def prompt_of(learner: Learner, task: task_batches.Task, context: bool) -> prompts.Prompt:
    """The run's prompt for ``task``, with its passages when ``context`` (cut as the bank's with
    ``prompt_passages = "as_gradient"``), asking for the task's answer kind."""
    cfg = learner.preset.learner
    return prompts.build_prompt(learner.tokenizer, task.question, task.passages if context else None, cfg,
                                prompts.prompt_passage_len(cfg, "eval"), kind=task.kind, choices=task.choices)


def answer(spec: MethodSpec, learner: Learner, items: Sequence[task_batches.Task], *, bank=None, gamma: float = 1.0,
           topk: int = 3, batch_size: int | None = None, nll: bool = True, desc: str = "evaluate") -> list[dict]:
    """Answer ``items`` as ``spec`` says, in batches sorted by prompt length; rows in the input order."""
    if spec.reads_bank and bank is None:
        raise ValueError("this method reads gradients from a Gradient Bank: pass bank= (bank.open_bank(topk, run, "
                         "dataset, split, scheme, learner=learner), written by 04_encode)")
    if bank is not None:
        checked_bank(bank, learner)
    items = [dataclasses.replace(t, passages=t.passages[:topk], passage_ids=t.passage_ids[:topk]) for t in items]
    if spec.adapts and any(not t.passages for t in items):
        raise ValueError("ReGrad methods need each question's retrieved passages; some tasks have none")
    pids = [list(t.passage_ids) for t in items]
    if spec.shift:      # question i takes question i-1's passages; question 0 the last question's
        pids = pids[-1:] + pids[:-1]
    used = pids if spec.adapts else [list(t.passage_ids) if spec.context else [] for t in items]
    batch_size = batch_size or learner.preset.generation.batch_size
    built = [prompt_of(learner, t, spec.context) for t in items]
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
            weights = method_weights(spec, learner, batch, [pids[i] for i in index], bank, gamma)
            gold = [prompts.answer_ids(tok, t.answer) for t in batch] if nll else None
            with learner.autocast(), (lora.disabled(model) if spec.base else contextlib.nullcontext()):
                out = generation.generate(model, tok, [prompt_ids[i] for i in index], max_new_tokens=max_new,
                                          weights=weights, score_ids=gold, stop=learner.preset.generation.stop)
            done.append([(i, _row(task, gen, used[i], built[i].truncated)) for i, task, gen in zip(index, batch, out)])
            bar.update(len(batch))
    rows: list[dict | None] = [None] * len(items)
    for i, row in (pair for part in distributed.merge_turns(done, len(batches)) for pair in part):
        rows[i] = row
    return rows  # type: ignore[return-value]


def _row(task: task_batches.Task, gen: generation.Generation, passage_ids: list[str], truncated: int) -> dict:
    """One prediction row; ``prediction`` is the answer of the task's kind (a yes/no label or an option letter, ""
    when none can be found: :func:`metrics.extract`), ``generated`` the raw new text."""
    row = {"test_id": task.test_id, "question": task.question, "answers": list(task.answers),
           "prediction": metrics.extract(task.kind, gen.answer, task.choices), "generated": gen.text,
           "passage_ids": passage_ids, "answer_nll": gen.answer_nll, "min_margin": gen.min_margin,
           "truncated_passages": truncated}
    if task.kind != "short":
        row.update(answer_kind=task.kind, choices=list(task.choices))
    return row


def run_method(method: str, learner: Learner, items: Sequence[task_batches.Task], *, bank=None,
               gamma: float | None = None, topk: int = 3, batch_size: int | None = None) -> list[dict]:
    """Answer every task with ``method``; one prediction row per task, in the input order.

    Rows: test_id, question, answers (gold), prediction, generated (raw new text), passage_ids (the passages
    whose text or gradients were used), answer_nll. ``bank``: a :class:`regrad_lib.bank.reader.GradientBank` for regrad,
    regrad_icl and shift, checked against ``learner`` (model, LoRA layout, meta weights) however it was opened;
    every row it serves is checked against its checksum. ``no_update`` ignores ``gamma``; ``gamma=None`` is the
    run's ``learner.gamma``.
    """
    spec = SPECS[check_methods([method])[0]]
    gamma = learner.preset.learner.gamma if gamma is None else gamma
    if spec.context and not spec.base and not spec.trained_apart and learner.preset.learner.blind_context:
        log.warning("%s on a learner meta-trained with blind_context=true: it never saw passages in "
                    "its prompt during meta-training", method)
    return answer(spec, learner, items, bank=bank, gamma=gamma if spec.adapts else 0.0, topk=topk,
                  batch_size=batch_size, desc=method)


def predict_online(learner: Learner, items: Sequence[task_batches.Task], *, gamma: float = 1.0,
                   batch_size: int | None = None) -> list[str]:
    """Predictions with on-the-fly gradients (no bank), for training's validation F1.

    The prompt follows the learner's ``blind_context`` (question only, or with its passages as in training).
    """
    spec = MethodSpec("meta", context=not learner.preset.learner.blind_context, update="online")
    topk = max((len(t.passages) for t in items), default=0)
    rows = answer(spec, learner, items, gamma=gamma, topk=topk, batch_size=batch_size, nll=False, desc="validate")
    return [r["prediction"] for r in rows]
