"""Explore one typed question (05_evaluate, "Explore a question"): its retrieved passages, the answers of
closed_book / rag / regrad / no_update side by side, and the answer tokens' probabilities before (``phi``) and
after (``phi'_q``) the update.

The question need not be in any dataset, so its passages come from the index and ``regrad`` takes their
gradients on the fly (``regrad_online``: the same sums the Gradient Bank would give). Every answer goes through
the evaluation harness (:func:`regrad_lib.answering.harness.run_method`): same prompts, decoding and answer extraction.
``question = None`` skips the exploration (:class:`Skipped`: the notebook's cells show a note and load nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regrad_lib.answering import harness, methods
from regrad_lib.core import adapters, lora, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import prompts
from regrad_lib.io import params
from regrad_lib.reporting import plots
from regrad_lib.retrieval import interface

__all__ = ["Skipped", "explore", "Exploration"]

METHODS = {"closed_book": "closed_book", "rag": "rag", "regrad": "regrad_online", "no_update": "no_update"}


@dataclass
class Exploration:
    """What one question shows; ``probabilities`` maps "before"/"after" to one probability per answer token."""
    question: str
    passages: list[interface.Hit]
    answers: dict[str, str]
    scored_answer: str
    tokens: list[str]
    probabilities: dict[str, list[float]]
    gamma: float
    task: task_batches.Task
    learner: Learner | None = field(default=None, repr=False, compare=False)

    def figure(self):
        """The answer tokens' probabilities before (``phi``) and after (``phi'_q``) the update."""
        return plots.token_probabilities(self.tokens, {"before (phi)": self.probabilities["before"],
                                                       "after (phi'_q)": self.probabilities["after"]},
                                         f"Answer {self.scored_answer!r}: token probabilities")

    def export(self, folder: str | Path, run: str | None = None) -> dict:
        """``phi'_q`` of this question as a PEFT adapter in ``folder`` (:func:`adapters.export_question`), described."""
        return adapters.describe(methods.export_question(self.learner, self.task, folder, gamma=self.gamma, run=run))

    def _repr_markdown_(self) -> str:
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = [f"**Question:** {cell(self.question)}", "", "| rank | passage id | title | score | text |",
                 "|---|---|---|---|---|"]
        lines += [f"| {i} | {h.passage_id} | {cell(h.title)} | {h.score:.2f} | {cell(h.text[:240])}… |"
                  for i, h in enumerate(self.passages)]
        lines += ["", "| method | answer |", "|---|---|"]
        lines += [f"| {m} | {cell(a) or '*(empty)*'} |" for m, a in self.answers.items()]
        lines += ["", f"Scored answer: **{cell(self.scored_answer)}** (gamma = {self.gamma:g}); mean token "
                  f"probability {_mean(self.probabilities['before']):.4g} before the update (phi), "
                  f"{_mean(self.probabilities['after']):.4g} after (phi'_q)."]
        return "\n".join(lines)


@dataclass(frozen=True)
class Skipped:
    """No question to explore: each of the notebook's exploration cells shows this note instead."""
    reason: str = "question = None: the exploration is skipped"

    def figure(self) -> Skipped:
        return self

    def export(self, folder: str | Path, run: str | None = None) -> Skipped:
        return self

    def _repr_markdown_(self) -> str:
        return f"*{self.reason}*"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def token_probabilities(learner: Learner, question: str, answer: str,
                        weights: list[dict[str, torch.Tensor]]) -> tuple[list[str], list[list[float]]]:
    """The answer's tokens (`` answer`` + the end-of-turn token, as in training) and each token's probability under
    each of ``weights`` (question-only prompt), all weight sets in one batched forward."""
    tok = learner.tokenizer
    scored = task_batches.Task(0, question, (answer,))
    batch = task_batches.qa_batch(tok, [scored] * len(weights), learner.preset.learner, with_context=False)
    batch = batch.to(learner.device)
    rows = {n: torch.stack([w[n] for w in weights]) for n in weights[0]}
    with torch.no_grad(), learner.autocast(), lora.use(learner.model, rows):
        logits = learner.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    mask = labels[0] != prompts.IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    tokens = [tok.decode([i]) for i in labels[0][mask].tolist()]
    return tokens, [row[mask].exp().tolist() for row in logp]


@params.typed
def explore(learner: Learner | Callable[[], Learner], retriever, question: str | None, *, topk: int = 3,
            gamma: float | None = None, answer: str | None = None) -> Exploration | Skipped:
    """Retrieve ``topk`` passages for ``question``, answer it four ways, score the answer tokens before/after.

    ``answer``: a gold answer to score; None scores regrad's own answer. ``gamma`` defaults to ``learner.gamma``.
    ``learner`` may be a loader (called only when there is a question); ``question = None`` gives :class:`Skipped`.
    """
    if question is None:
        return Skipped()
    if not question.strip():
        raise ValueError("question is empty: type a question in the parameters cell, or question = None to skip "
                         "the exploration")
    if callable(learner) and not isinstance(learner, Learner):
        learner = learner()
    gamma = learner.preset.learner.gamma if gamma is None else gamma
    [hits] = retriever.search([question], topk)
    if not hits:
        raise ValueError(f"the index found no passage for {question!r}; try other words")
    task = task_batches.Task(0, question.strip(), (answer or "?",), tuple((h.title, h.text) for h in hits),
                      tuple(str(h.passage_id) for h in hits))
    answers = {label: harness.run_method(method, learner, [task], gamma=gamma, topk=topk)[0]["prediction"]
               for label, method in METHODS.items()}
    scored = answer if answer else answers["regrad"]
    phi = {n: p.detach() for n, p in learner.phi.items()}
    adapted = methods.question_weights(learner, task, gamma=gamma)
    tokens, (before, after) = token_probabilities(learner, task.question, scored or "?", [phi, adapted])
    return Exploration(task.question, hits, answers, scored, tokens, {"before": before, "after": after}, gamma,
                       task, learner)
