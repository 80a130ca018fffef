"""03_train's tasks: every training dataset's augmented records, shuffled (seeded) into the validation slice and the
training tasks, and the reproducible task order of each epoch.

The validation slice for checkpoint selection is held out of the *training* tasks, never the dev file that
05_evaluate reports (method.md, "Known flaws").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.core import task_batches
from regrad_lib.core.task_batches import Task


@dataclass
class TrainData:
    """The shuffled training tasks and the held-out validation slice."""
    train: list[Task]
    validation: list[Task]

    def fingerprint(self) -> str:
        ids = [[[t.extra.get("dataset"), t.test_id, t.question] for t in part]
               for part in (self.train, self.validation)]
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def load_tasks(train_datasets: Sequence[str], train_file: str, topk: int) -> list[Task]:
    """Every record of ``data/augmented/<dataset>/<train_file>.json`` as a :class:`Task` (dataset in ``extra``)."""
    if isinstance(train_datasets, str):
        raise TypeError(f"train_datasets={train_datasets!r}: give a list of dataset names, e.g. [{train_datasets!r}]")
    if not train_datasets:
        raise ValueError("train_datasets is empty: name at least one dataset, e.g. ['popqa', 'hotpotqa']")
    out = []
    for dataset in train_datasets:
        out += [dataclasses.replace(task, extra={"dataset": dataset})
                for task in task_batches.load(dataset, train_file, topk)]
    return out


def with_distractors(tasks: Sequence[Task], relation_of: dict[tuple[str, int], str], share: float, seed: int,
                     datasets: Sequence[str]) -> list[Task]:
    """``tasks`` of which a seeded ``share`` of those of ``datasets`` with a known relation have their *last*
    passage replaced by the best-ranked passage of another training question of the same dataset that asks the same
    relation with another answer (and whose passage is not already in the top-k): the top-k then holds two entities
    with the same relation and different values, and only binding the value to the asked entity answers right.
    ``relation_of``: ``{(dataset, test_id): relation}`` (:mod:`regrad_lib.data.relations`). The replaced task keeps
    its question and answer; ``extra["distractor_of"]`` names the question the passage came from."""
    from regrad_lib.data.metrics import normalize_answer

    if share == 0:
        return list(tasks)
    pools: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(tasks):
        key = (t.extra.get("dataset"), relation_of.get((t.extra.get("dataset"), t.test_id)))
        if key[0] in datasets and key[1] is not None:
            pools.setdefault(key, []).append(i)
    rng = random.Random(seed * 7_919 + 17)
    out = []
    for i, t in enumerate(tasks):
        key = (t.extra.get("dataset"), relation_of.get((t.extra.get("dataset"), t.test_id)))
        if key not in pools or rng.random() >= share or not t.passages:
            out.append(t)
            continue
        mine = {normalize_answer(a) for a in t.answers}
        candidates = [j for j in pools[key] if j != i and tasks[j].passages and
                      not mine & {normalize_answer(a) for a in tasks[j].answers} and
                      tasks[j].passage_ids[0] not in t.passage_ids]
        if not candidates:
            out.append(t)
            continue
        other = tasks[candidates[rng.randrange(len(candidates))]]
        out.append(dataclasses.replace(t, passages=t.passages[:-1] + other.passages[:1],
                                       passage_ids=t.passage_ids[:-1] + other.passage_ids[:1],
                                       extra={**t.extra, "distractor_of": other.test_id}))
    return out


def split_tasks(all_tasks: list[Task], validation_size: int, seed: int,
                max_train_tasks: int | None = None) -> TrainData:
    """Mix and shuffle (seeded); the first ``validation_size`` are the validation slice, then ``max_train_tasks``."""
    if validation_size >= len(all_tasks):
        raise ValueError(f"validation_size={validation_size} but only {len(all_tasks)} training tasks: lower "
                         "train_args validation_size or augment more training questions")
    order = list(range(len(all_tasks)))
    random.Random(seed).shuffle(order)
    validation = [all_tasks[i] for i in order[:validation_size]]
    train = [all_tasks[i] for i in order[validation_size:]]
    return TrainData(train[:max_train_tasks] if max_train_tasks else train, validation)


def training_data(train_datasets: Sequence[str], train_file: str, args) -> TrainData:
    """The tasks a run with train args ``args`` meta-trains and validates on (the one recipe 03_train, the fine-tuned
    baselines and the drift study's exclusions share): every training file's tasks, the binding distractors of
    ``args.distractor_share``, then the seeded split into training tasks and the validation slice."""
    from regrad_lib.data import relations

    tasks = load_tasks(train_datasets, train_file, args.topk)
    if args.distractor_share > 0:
        relation_of = {}
        for dataset in args.distractor_datasets:
            known = relations.of_augmented(dataset, train_file) if dataset in train_datasets else {}
            if not known:
                raise ValueError(f"distractor_datasets names {dataset!r}, but no relation is known for its training "
                                 f"questions (it is not trained on, or data/augmented/{dataset}/{train_file}.json's "
                                 "sidecar names no dataset folder with relations: the probes and PopQA have them)")
            relation_of.update({(dataset, i): r for i, r in known.items()})
        tasks = with_distractors(tasks, relation_of, args.distractor_share, args.seed, args.distractor_datasets)
    return split_tasks(tasks, args.validation_size, args.seed, args.max_train_tasks)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The task order of one epoch (reproducible from the seed and the epoch number)."""
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def step_batches(n_train: int, seed: int, meta_batch_size: int, steps: int) -> list[list[int]]:
    """The training-task indices of each of 03_train's first ``steps`` optimizer steps: each epoch's
    :func:`epoch_order` cut into meta batches (an epoch's last batch possibly smaller), as the training loop takes
    them."""
    per_epoch = math.ceil(n_train / meta_batch_size)
    out: list[list[int]] = []
    order_epoch, order = None, []
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(n_train, seed, epoch)
        out.append(order[position * meta_batch_size:(position + 1) * meta_batch_size])
    return out


def stepped_tasks(train: Sequence[Task], seed: int, meta_batch_size: int, steps: int) -> list[Task]:
    """The training tasks the first ``steps`` optimizer steps of 03_train took, in order (:func:`step_batches`)."""
    return [train[i] for batch in step_batches(len(train), seed, meta_batch_size, steps) for i in batch]


def describe(tasks: Sequence[Task], limit: int = 8) -> str:
    shown = [f"{t.extra.get('dataset', '?')}:{t.test_id} {t.question[:60]!r}" for t in tasks[:limit]]
    return "; ".join(shown) + (f"; ... ({len(tasks) - limit} more)" if len(tasks) > limit else "")
