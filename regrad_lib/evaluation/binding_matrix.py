"""Why the update binds or not: on the binding probe, the answer NLL of every family member's value under the update
each question gets (regrad's ``phi'_q``: the family's three passages' summed gradients, the same for the three
questions) with the question naming each member in turn.

For a family with members 1-3 and values v1-v3, question i ("What is the job of <member i>?") gives one row per
member j: the NLL of v_j. An update that carries values without their owners gives each value the same NLL whoever is
asked; one that binds makes v_i likelier when member i is asked. Written by 05_evaluate when the binding probe is
evaluated (``results/<run>/probe_binding/binding_matrix.json``); read by
:func:`regrad_lib.reporting.binding_report.name_effect` for 06_analyze. The update is computed online (the bank's
sums, :func:`regrad_lib.core.generation.online_gradients`), so no bank is needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from regrad_lib.core import generation, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import probe_binding
from regrad_lib.io import paths, result_files

__all__ = ["write"]

DATASET = "probe_binding"


def matrix_rows(learner: Learner, tasks: list[task_batches.Task], questions: list[dict], gamma: float) -> list[dict]:
    """One row per (question, family member): the member's value's answer NLL under the question's update
    (``phi'_q``, equation 2) and under ``phi`` (no update), with the question's prompt (question only)."""
    rows = []
    for task in tqdm(tasks, desc="binding matrix", unit="question"):
        q = questions[task.test_id]
        members = [(q["entity"], q["answer"][0], True)] + [(d["entity"], d["value"], False) for d in q["distractors"]]
        grads = generation.online_gradients(learner, [task])
        with torch.no_grad():
            phi = {n: p.detach() for n, p in learner.phi.items()}
            adapted = regrad.apply_update(phi, {n: g[0].to(phi[n].dtype) for n, g in grads.items()}, learner.alpha,
                                          gamma)
        variants = [dataclasses.replace(task, answers=(value,)) for _, value, _ in members]
        updated = generation.answer_nll(learner, variants, adapted, context=False)
        plain = generation.answer_nll(learner, variants, phi, context=False)
        for (owner, value, asked), nll, nll0 in zip(members, updated, plain):
            rows.append({"test_id": task.test_id, "family": q["family"], "asked": q["entity"], "value_of": owner,
                         "value": value, "is_asked": asked, "nll": nll, "nll_no_update": nll0})
    return rows


def write(run: str, learner: Learner, *, split: str = "dev", gamma: float | None = None,
          evaluation: str | None = None, data_root: str = "data/sample", limit: int | None = None) -> Path:
    """``results/<run>/probe_binding/binding_matrix.json`` (or a named evaluation's) for the questions of the
    augmented ``split`` (kept when computed with the same settings and weights)."""
    gamma = learner.preset.learner.gamma if gamma is None else gamma
    target = paths.binding_matrix_file(run, evaluation)
    settings = {"split": split, "gamma": gamma, "limit": limit, "meta_hash": learner.meta_hash()}
    if target.is_file() and result_files.read_binding_matrix(run, evaluation).get("settings") == settings:
        return target
    questions = probe_binding.questions(f"{data_root}/{DATASET}", "dev")
    tasks = task_batches.load(DATASET, split, learner.preset.train.topk, end=limit)
    rows = matrix_rows(learner, tasks, questions, gamma)
    return result_files.write_binding_matrix(run, evaluation, {"settings": settings, "rows": rows})
