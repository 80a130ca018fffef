"""ReGrad tasks: a question, its gold answer and its retrieved passages, turned into token batches.

One place builds the batches that training (meta tasks), encoding (passages) and evaluation (online gradients,
answer NLL) all use, so the three can never format or truncate differently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from regrad_lib.config import LearnerConfig
from regrad_lib.core.regrad import TaskBatch, TokenBatch, collate
from regrad_lib.data import prompts
from regrad_lib.data.metrics import ANSWER_KINDS


@dataclass(frozen=True)
class Task:
    """One question with its gold answers and top-k passages (an augmented record)."""
    test_id: int
    question: str
    answers: tuple[str, ...]
    passages: tuple[tuple[str, str], ...] = ()          # (title, text)
    passage_ids: tuple[str, ...] = ()
    kind: str = "short"                                 # answer kind (metrics.ANSWER_KINDS)
    choices: tuple[str, ...] = ()                       # yes/no labels allowed, or the lettered options
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def answer(self) -> str:
        """The training target: the first gold alias (method.md notation)."""
        return self.answers[0]


def _strings(record: dict, key: str, where: str, *, empty_items: bool = False) -> list[str]:
    """Field ``key`` of an augmented record: a list of strings (non-empty ones unless ``empty_items``)."""
    value = record[key]
    if not isinstance(value, list):
        raise ValueError(f"{where}: field '{key}' must be a list of strings, got {type(value).__name__} "
                         f"{str(value)[:60]!r} (augmented records are written by 02_augment)")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not (empty_items or item.strip()):
            raise ValueError(f"{where}: field '{key}[{i}]' must be a {'' if empty_items else 'non-empty '}string, "
                             f"got {type(item).__name__} {str(item)[:60]!r}")
    return value


def from_record(record: dict, topk: int, where: str = "record") -> Task:
    """A task from one augmented record (``data/augmented/<dataset>/<name>.json``), keeping the top ``topk``; every
    field is checked (a string of answers would be scored letter by letter, a short ``passage_ids`` or ``titles``
    list would silently drop passages)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an augmented record (a JSON object), got {type(record).__name__}")
    for key in ("test_id", "question", "answers", "passages", "passage_ids"):
        if key not in record:
            raise ValueError(f"{where}: missing field '{key}' (augmented records are written by 02_augment)")
    test_id = record["test_id"]
    if isinstance(test_id, bool) or not isinstance(test_id, int):
        raise ValueError(f"{where}: field 'test_id' must be an integer, got {type(test_id).__name__} {test_id!r}")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string, got {record['question']!r}")
    answers = _strings(record, "answers", where)
    if not answers:
        raise ValueError(f"{where}: field 'answers' is empty")
    passages = _strings(record, "passages", where)
    ids = [str(i) for i in record["passage_ids"]] if isinstance(record["passage_ids"], list) else \
        _strings(record, "passage_ids", where)
    titles = _strings(record, "titles", where, empty_items=True) if record.get("titles") is not None else \
        [""] * len(passages)
    for key, values in (("passage_ids", ids), ("titles", titles)):
        if len(values) != len(passages):
            raise ValueError(f"{where}: field '{key}' has {len(values)} entries but 'passages' {len(passages)}: each "
                             "passage needs its id and title; re-run 02_augment for this file (overwrite = True)")
    if len(passages) < topk:
        raise ValueError(f"{where}: {len(passages)} passages but topk={topk}; re-run 02_augment with "
                         f"topk >= {topk}")
    kind = record.get("answer_kind", "short")
    if kind not in ANSWER_KINDS:
        raise ValueError(f"{where}: field 'answer_kind' is {kind!r}, not one of {list(ANSWER_KINDS)}")
    choices = _strings(record, "choices", where) if "choices" in record else []
    return Task(test_id=test_id, question=record["question"], answers=tuple(answers),
                passages=tuple(zip(titles[:topk], passages[:topk])), passage_ids=tuple(ids[:topk]), kind=kind,
                choices=tuple(choices))


def passage_batch(tokenizer, passages: Sequence[tuple[str, str]], max_len: int,
                  passage_format: str = "text") -> TokenBatch:
    """Passages as one right-padded LM batch (equation 1's inputs), each after the document start token."""
    start = prompts.document_start(tokenizer)
    return collate([prompts.passage_example(tokenizer, t, x, max_len, passage_format, start) for t, x in passages],
                   tokenizer.pad_token_id)


def qa_examples(tokenizer, tasks: Sequence[Task], cfg: LearnerConfig, *, with_context: bool | None = None,
                stage: str = "train", passage_len: int | None = None) -> list[prompts.Example]:
    """Prompt + first gold answer per task; loss on the answer tokens only (``L_ans``).

    Prompt passages are cut as their gradients in ``stage`` (:func:`prompts.prompt_passage_len`; ``passage_len``
    overrides the gradients' budget)."""
    with_context = (not cfg.blind_context) if with_context is None else with_context
    cut = prompts.prompt_passage_len(cfg, stage)
    if cut is not None and passage_len is not None:     # the caller's budget for the gradients' passages
        cut = passage_len
    return [prompts.qa_example(tokenizer, t.question, t.answer, t.passages if with_context else None, cfg, cut,
                               kind=t.kind, choices=t.choices) for t in tasks]


def qa_batch(tokenizer, tasks: Sequence[Task], cfg: LearnerConfig, *, with_context: bool | None = None,
             stage: str = "train") -> TokenBatch:
    """:func:`qa_examples` as one right-padded batch."""
    return collate(qa_examples(tokenizer, tasks, cfg, with_context=with_context, stage=stage), tokenizer.pad_token_id)


def task_batch(tokenizer, tasks: Sequence[Task], cfg: LearnerConfig, *, passage_len: int | None = None,
               with_context: bool | None = None) -> TaskBatch:
    """Meta tasks: every task's passages (grouped, cut to ``passage_len``, default ``max_context_len``) and its QA
    example (its prompt passages cut the same way with ``prompt_passages = "as_gradient"``), for
    :func:`regrad.meta_losses`."""
    passages = [p for t in tasks for p in t.passages]
    if not passages:
        raise ValueError("these tasks have no passages: ReGrad needs the retrieved passages of each question")
    group = torch.tensor([i for i, t in enumerate(tasks) for _ in t.passages], dtype=torch.long)
    length = passage_len or cfg.max_context_len
    qa = qa_examples(tokenizer, tasks, cfg, with_context=with_context, stage="train", passage_len=length)
    return TaskBatch(passage_batch(tokenizer, passages, length, cfg.passage_format),
                     group, collate(qa, tokenizer.pad_token_id), sum(e.truncated for e in qa))


def mixed_count(topk: int, mixed: float) -> int:
    """How many of a question's ``topk`` passages the mixed-documents ablation replaces: ``⌊topk·mixed⌋`` (the
    public code's ``int(topk * mixed)``; 1e-9 absorbs the rounding of shares such as 2/3)."""
    if isinstance(mixed, bool) or not isinstance(mixed, (int, float)) or not 0.0 <= mixed <= 1.0:
        raise ValueError(f"mixed={mixed!r}: the share of each question's top-k passages to replace, from 0.0 "
                         "(none) to 1.0 (all)")
    return math.floor(topk * mixed + 1e-9)


def mix(tasks: Sequence[Task], mixed: float, topk: int) -> list[Task]:
    """The mixed-documents ablation (the public code's ``encode.py --mixed p``): the last ``⌊topk·mixed⌋`` of each
    task's ``topk`` passages are replaced by the first (best-ranked) ``⌊topk·mixed⌋`` passages of the next task
    (the last task takes the first task's). Everything else of the task is unchanged; ``mixed = 0`` is the identity.

    Applied to a whole augmented file before any slice is taken (:func:`load`), so 04_encode and 05_evaluate agree
    on every question's passages whatever ``start``/``limit`` each uses.
    """
    m = mixed_count(topk, mixed)
    if m == 0:
        return list(tasks)
    if len(tasks) < 2:
        raise ValueError(f"mixed={mixed} needs at least two questions: a question's passages are replaced by the "
                         f"next question's, and there are {len(tasks)}")
    out = []
    for i, task in enumerate(tasks):
        other = tasks[(i + 1) % len(tasks)]
        if len(task.passages) != topk or len(other.passages) < m:
            raise ValueError(f"question {task.test_id}: mixing needs {topk} passages per question, it has "
                             f"{len(task.passages)} (the next one {len(other.passages)})")
        out.append(dataclasses.replace(task, passages=task.passages[:topk - m] + other.passages[:m],
                                       passage_ids=task.passage_ids[:topk - m] + other.passage_ids[:m]))
    return out


def load(dataset: str, name: str, topk: int, start: int = 0, end: int | None = None,
         mixed: float = 0.0) -> list[Task]:
    """Tasks ``start:end`` of ``data/augmented/<dataset>/<name>.json`` (02_augment's output), top ``topk`` each;
    with ``mixed`` > 0 the passages of :func:`mix` over the whole file.

    The one reader of augmented files for training, encoding and evaluation; a missing file names 02_augment.
    """
    from regrad_lib.io import artifacts, params, paths

    params.integer("start", start, minimum=0)        # a negative bound would be a Python slice
    if end is not None:
        params.integer("end (the limit of questions)", end, minimum=0)
    path = augmented_path(dataset, name)
    where = paths.relative(path)
    records = artifacts.read_json(path, unique_keys=True)
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected a JSON list of augmented records, got {type(records).__name__}")
    if mixed_count(topk, mixed) == 0:
        return _distinct([from_record(r, topk, where=f"{where}: record {i}")
                          for i, r in enumerate(records[start:end], start)], where, start)
    every = _distinct([from_record(r, topk, where=f"{where}: record {i}") for i, r in enumerate(records)], where, 0)
    return mix(every, mixed, topk)[start:end]


def _distinct(tasks: list[Task], where: str, first: int) -> list[Task]:
    """``tasks`` (records ``first``, ``first + 1``, ...), unless two share a test_id (rows are matched by it)."""
    seen: dict[int, int] = {}
    for i, task in enumerate(tasks, first):
        if task.test_id in seen:
            raise ValueError(f"{where}: records {seen[task.test_id]} and {i} have the same test_id {task.test_id}: "
                             "each question needs its own (results are matched by it); re-run 02_augment for this "
                             "file (overwrite = True)")
        seen[task.test_id] = i
    return tasks


def augmented_path(dataset: str, name: str):
    """``data/augmented/<dataset>/<name>.json``, which must exist (else an error naming 02_augment)."""
    from regrad_lib.io import paths

    path = paths.augmented_file(dataset, name)
    if not path.is_file():
        split = "dev" if name == "dev" else name.split("_")[0]
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 02_augment "
                                f"(dataset={dataset!r}, split={split!r}); run 02_augment for this dataset and split")
    return path
