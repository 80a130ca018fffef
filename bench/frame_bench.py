"""The prompt frame and what each method sees, on the demo's data and model: JSON lines.

- ``lengths``: per dataset (``data/augmented/<dataset>/dev.json``, top-k), the mean prompt tokens of the methods
  without passages (closed_book, regrad, regrad_online, shift, no_update: one frame) and with passages (rag,
  regrad_icl), for the frame **before** the neutral worked example (three worked examples, whole passages) and
  **now** (the preset's frame); the tokens shared by every prompt (run once per batch when rows share weights); the
  share of top-k passages longer than the gradients' budget (``bank_context_len``), the share of their tokens cut,
  and the longest passage (the budget that would cut nothing). Tokenizer only.
- ``terminator``: after the gold answer of the first ``--questions`` probe *training* questions, the probability the
  model gives the newline and the end-of-turn token, and the answer NLL with the answer alone, + newline, + the
  end-of-turn token: the base model (closed_book and rag prompts) in both frames and, with ``--run``, the run's
  meta-trained LoRA (no update, and its online update of the question's passages) in the frame it was trained in.
- ``examples``: closed_book and rag of the base model (EM, F1, mean answer tokens) on the first ``--questions``
  training questions of each ``--datasets`` (validation rows, never the reported dev questions) with one worked
  example, two, and the three of before: how many worked examples the frame needs.
- ``encode``: 04_encode's gradient time per passage at each of ``--budgets`` (bank_context_len) on the first
  ``--passages`` distinct dev passages of ``--datasets``.

    .venv/bin/python -m bench.frame_bench lengths
    flock /tmp/regrad-heavy.lock .venv/bin/python -m bench.frame_bench terminator --questions 20 --run demo
    flock /tmp/regrad-heavy.lock .venv/bin/python -m bench.frame_bench examples --questions 20
    flock /tmp/regrad-heavy.lock .venv/bin/python -m bench.frame_bench encode --budgets 128,256 --passages 48

Needs 02_augment's files of the work root (``REGRAD_WORK``), e.g. from ``make demo`` or
``python -m regrad_lib.runner.pipeline --run demo --preset smollm2-135m-instruct --steps 01-02``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from regrad_lib import config
from regrad_lib.core import generation
from regrad_lib.data import metrics, prompts
from regrad_lib.data.prompts import WorkedExample
from regrad_lib.evaluation import evaluate

DATASETS = ("probe", "popqa", "hotpotqa", "2wikimultihopqa", "complexwebquestions")
# The frame before the neutral worked example and end-of-turn label (commit 861c7ff), for measurement only: three
# examples, two of them probe templates with probe values.
BEFORE = (
    WorkedExample("Mara Uldin", "Mara Uldin drives a green car. These days Mara Uldin resides in Peru. Mara Uldin "
                  "plays the oboe in a band.", "Where does Mara Uldin live?", "Peru", "Mara Uldin"),
    WorkedExample("Kettle Hill", "Kettle Hill is a low hill near the village of Brenmoor. Its summit is covered in "
                  "heather.", "Near which village is Kettle Hill?", "Brenmoor", "Kettle Hill"),
    WorkedExample("Tomas Reld", "Tomas Reld is a native of Oslo. By profession, Tomas Reld is a pilot.",
                  "What is the job of Tomas Reld?", "pilot", "Tomas Reld"),
)
# A second invented example, for the one-or-two comparison only.
SECOND = WorkedExample("Velloran Ferry", "The Velloran Ferry crosses the Ombrel Sound twice a day. Its hull is "
                       "painted in broad stripes. The crossing takes forty minutes.",
                       "Which stretch of water does the Velloran Ferry cross?", "Ombrel Sound", "Velloran Ferry")
THIRD = WorkedExample("Orrin Lighthouse", "The Orrin Lighthouse stands on a granite spit. A stair of ninety-one steps "
                      "leads to its lamp room. Its keeper's cottage is now a small museum.",
                      "How many steps lead to the lamp room of the Orrin Lighthouse?", "ninety-one", "Orrin Lighthouse")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


@contextlib.contextmanager
def frame(examples):
    """Prompts built with ``examples`` as the worked examples (measurement only)."""
    saved = prompts.EXAMPLES
    prompts.EXAMPLES = tuple(examples)
    try:
        yield
    finally:
        prompts.EXAMPLES = saved


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 1) if values else math.nan


def lengths(args, preset) -> None:
    from transformers import AutoTokenizer

    from regrad_lib.core import modeling

    tok = AutoTokenizer.from_pretrained(modeling.prepare(preset.learner.model_name_or_path))
    now = preset.learner
    before = config.LearnerConfig(**{**now.__dict__, "prompt_passages": "whole"})
    budget = now.bank_context_len
    start = prompts.document_start(tok)
    for dataset in args.datasets:
        items = evaluate.load_tasks(dataset, "dev", args.topk, args.limit)
        row = {"dataset": dataset, "questions": len(items), "budget": budget}
        for name, examples, cfg in (("before", BEFORE, before), ("now", prompts.EXAMPLES, now)):
            with frame(examples):
                cut = prompts.prompt_passage_len(cfg, "eval")
                blind = [prompts.prompt_ids(tok, t.question, None, cfg) for t in items]
                context = [prompts.prompt_ids(tok, t.question, t.passages, cfg, cut) for t in items]
            row[f"{name}_no_passages"] = _mean(map(len, blind))
            row[f"{name}_with_passages"] = _mean(map(len, context))
            row[f"{name}_shared_no_passages"] = generation.shared_prefix_length(blind)
            row[f"{name}_shared_with_passages"] = generation.shared_prefix_length(context)
        sizes = [len(start) + len(tok(prompts.format_passage(title, text, now.passage_format),
                                      add_special_tokens=True)["input_ids"])
                 for t in items for title, text in t.passages]
        over = [n for n in sizes if n > budget]
        row.update(passages=len(sizes), share_cut=round(len(over) / len(sizes), 3),
                   share_tokens_cut=round(sum(n - budget for n in over) / sum(sizes), 3), longest=max(sizes))
        emit(**row)


def _logprobs(model, ids: list[int]):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def _terminator_row(model, tok, prompt: list[int], answer: str) -> dict:
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    eot = prompts.end_of_turn(tok)
    body = tok(f" {answer.strip()}", add_special_tokens=False)["input_ids"]
    lp = _logprobs(model, prompt + body)
    n = len(prompt)
    answer_lp = [lp[n - 1 + j, t].item() for j, t in enumerate(body)]
    after = lp[n - 1 + len(body)]
    nl, end = after[newline[0]].item(), after[eot[0]].item()
    return {"p_newline": math.exp(nl), "p_end_of_turn": math.exp(end),
            "nll_answer": -sum(answer_lp) / len(body), "nll_newline": -(sum(answer_lp) + nl) / (len(body) + 1),
            "nll_end_of_turn": -(sum(answer_lp) + end) / (len(body) + 1)}


def _report(label: str, rows: list[dict]) -> None:
    emit(label=label, questions=len(rows), **{k: round(_mean_f(r[k] for r in rows), 3) for k in rows[0]})


def _mean_f(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def terminator(args, preset) -> None:
    import torch

    from regrad_lib.answering import methods, specs
    from regrad_lib.core import lora
    from regrad_lib.core.learner import Learner

    items = evaluate.load_tasks("probe", "train_all", args.topk, args.questions)
    base = Learner.create(preset)
    now = preset.learner
    before = config.LearnerConfig(**{**now.__dict__, "prompt_passages": "whole"})
    tok = base.tokenizer
    for name, examples, cfg in (("before", BEFORE, before), ("now", prompts.EXAMPLES, now)):
        with frame(examples), lora.disabled(base.model):
            cut = prompts.prompt_passage_len(cfg, "eval")
            for method, passages in (("closed_book", False), ("rag", True)):
                rows = [_terminator_row(base.model, tok, prompts.prompt_ids(tok, t.question, t.passages if passages
                                                                            else None, cfg, cut), t.answer)
                        for t in items]
                _report(f"{method} (base model), frame {name}", rows)
    if args.run:
        run = Learner.from_run(args.run)
        with frame(BEFORE):         # the run's own frame: it was trained with the old one
            for method in ("no_update", "regrad_online"):
                rows = []
                for t in items:
                    weights = methods.method_weights(specs.SPECS[method], run, [t], [list(t.passage_ids)], None,
                                                     1.0)
                    one = {n: w[0] for n, w in weights.items()} if weights[next(iter(weights))].dim() == 3 else weights
                    with lora.use(run.model, one), torch.no_grad():
                        rows.append(_terminator_row(run.model, tok, prompts.prompt_ids(tok, t.question, None,
                                                                                       run.preset.learner), t.answer))
                _report(f"{method} (run {args.run}), frame before", rows)


def examples(args, preset) -> None:
    from regrad_lib.answering import harness
    from regrad_lib.core.learner import Learner

    base = Learner.create(preset)
    tok = base.tokenizer
    frames = [(name, worked) for name, worked in (
        ("one", prompts.EXAMPLES[:1]), ("two", (*prompts.EXAMPLES[:1], SECOND)),
        ("three", (*prompts.EXAMPLES[:1], SECOND, THIRD)), ("before (three)", BEFORE))
        if name.split()[0] in args.frames.split(",")]
    for dataset in args.datasets:
        items = evaluate.load_tasks(dataset, "train_all", args.topk, args.questions)
        for name, worked in frames:
            with frame(worked):
                for method in ("closed_book", "rag"):
                    rows = harness.run_method(method, base, items)
                    scores = [metrics.score(r["prediction"], r["answers"]) for r in rows]
                    prompt = [len(harness.prompt_of(base, t, method == "rag").ids) for t in items]
                    emit(dataset=dataset, frame=name, method=method, questions=len(rows),
                         em=round(_mean_f(s["em"] for s in scores), 1), f1=round(_mean_f(s["f1"] for s in scores), 1),
                         answer_tokens=_mean(len(tok(r["prediction"])["input_ids"]) for r in rows),
                         copied_example_answer=sum(any(r["prediction"].strip() == w.answer for w in worked)
                                                   for r in rows),
                         prompt_tokens=_mean(prompt))


def encode_time(args, preset) -> None:
    import torch

    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner

    learner = Learner.create(preset)
    seen, items = set(), []
    for dataset in args.datasets:
        for p in encode.passages(dataset, "dev", args.topk):
            if p.pid not in seen:
                seen.add(p.pid)
                items.append(p)
    items = items[:args.passages]
    for _ in range(2):           # warm-up, then each budget twice, interleaved
        for budget in args.budgets:
            start = time.perf_counter()
            for _ in encode.gradient_batches(learner, items, args.batch_size, budget):
                pass
            seconds = time.perf_counter() - start
            tokens = [len(prompts.passage_example(learner.tokenizer, p.title, p.text, budget,
                                                  preset.learner.passage_format).input_ids) for p in items]
            emit(budget=budget, passages=len(items), mean_tokens=_mean(tokens), seconds=round(seconds, 2),
                 passages_per_s=round(len(items) / seconds, 2), threads=torch.get_num_threads())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("lengths", "terminator", "examples", "encode"))
    p.add_argument("--preset", default="smollm2-135m-instruct")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="lengths: first dev questions per dataset")
    p.add_argument("--questions", type=int, default=20)
    p.add_argument("--run", default=None, help="terminator: a trained run of the preset, e.g. demo")
    p.add_argument("--frames", default="one,two,three,before", help="examples: which frames (one, two, three: "
                   "invented and neutral; before: the three of the old frame)")
    p.add_argument("--budgets", default="128,256")
    p.add_argument("--passages", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.datasets = args.datasets.split(",")
    args.budgets = [int(b) for b in args.budgets.split(",")]
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    preset = config.load_preset(args.preset)
    {"lengths": lengths, "terminator": terminator, "examples": examples, "encode": encode_time}[args.what](args, preset)


if __name__ == "__main__":
    main()
