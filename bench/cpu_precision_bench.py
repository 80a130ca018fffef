"""bf16 against fp32 on this CPU, for the demo model (docs/method.md "Precision on a CPU"): the speed of gradient
work and of decoding under bf16 autocast, and how far bf16 moves each question's answer NLL.

Usage (JSON lines on stdout)::

    .venv/bin/python -m bench.cpu_precision_bench [--preset smollm2-135m-instruct] [--passages 16] [--questions 32]

Work, each timed in both precisions after one warm-up, best of ``--repeat`` (wall clock; run it alone):

- gradient work: ``regrad.per_passage_gradients`` of ``--passages`` sample passages cut to the preset's
  ``bank_context_len`` (04_encode's computation) in batches of 8, ``precision`` "no" vs "bf16";
- decoding: ``generation.generate`` of ``--questions`` PopQA questions (closed book, the preset's prompt frame and
  ``max_new_tokens``, batches of 16) with their gold answers scored, fp32 vs bf16 autocast; per question the
  answer NLL difference (bf16 − fp32): mean, SD, largest; and how many answers changed.

The model is the base model with the preset's LoRA at its initialisation (B = 0), the same for both precisions.
Whether this CPU computes bf16 natively (AVX512-BF16 or AMX) is printed: without it torch emulates bf16, and
:attr:`regrad_lib.core.learner.Learner.precision` keeps gradient work in fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from regrad_lib import config
from regrad_lib.core import generation, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import datasets, prompts
from regrad_lib.io import paths
from regrad_lib.reporting import reference


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def best(fn, repeat: int) -> float:
    fn()                                           # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-135m-instruct")
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    emit(name="machine", **reference.machine())
    preset = config.load_preset(args.preset)
    learner = Learner.create(preset)
    tok, model = learner.tokenizer, learner.model
    cut = preset.learner.bank_context_len
    records = datasets.load("popqa", paths.sample_dir() / "popqa", "dev", end=args.questions)
    corpus = [line.split("\t") for line in paths.sample_corpus().read_text(encoding="utf-8").splitlines()[1:]]
    passages = [(r[2], r[1]) for r in corpus[:args.passages]]
    batches = [task_batches.passage_batch(tok, passages[i:i + 8], cut, preset.learner.passage_format)
               for i in range(0, len(passages), 8)]
    seconds = {}
    for precision in ("no", "bf16"):
        seconds[precision] = best(lambda p=precision: [regrad.per_passage_gradients(model, learner.phi, b, precision=p)
                                                       for b in batches], args.repeat)
    emit(name="gradient_work", passages=len(passages), tokens=cut, fp32_s=round(seconds["no"], 2),
         bf16_s=round(seconds["bf16"], 2), bf16_speedup=round(seconds["no"] / seconds["bf16"], 2),
         op="regrad.per_passage_gradients, batches of 8, wall clock, best of repeat")
    prompt_ids = [prompts.build_prompt(tok, r.question, None, preset.learner).ids for r in records]
    gold = [prompts.answer_ids(tok, r.answers[0]) for r in records]
    out, seconds = {}, {}

    def decode(precision):
        rows = []
        with regrad.autocast(learner.device, precision):
            for i in range(0, len(prompt_ids), 16):
                rows += generation.generate(model, tok, prompt_ids[i:i + 16], score_ids=gold[i:i + 16],
                                            max_new_tokens=preset.generation.max_new_tokens,
                                            stop=preset.generation.stop)
        out[precision] = rows

    for precision in ("no", "bf16"):
        seconds[precision] = best(lambda p=precision: decode(p), args.repeat)
    diffs = [b.answer_nll - a.answer_nll for a, b in zip(out["no"], out["bf16"])]
    emit(name="decoding", questions=len(records), fp32_s=round(seconds["no"], 2), bf16_s=round(seconds["bf16"], 2),
         bf16_speedup=round(seconds["no"] / seconds["bf16"], 2),
         answer_nll_diff_mean=round(statistics.mean(diffs), 4), answer_nll_diff_sd=round(statistics.stdev(diffs), 4),
         answer_nll_diff_max=round(max(map(abs, diffs)), 4),
         answers_changed=sum(a.answer != b.answer for a, b in zip(out["no"], out["bf16"])),
         op="generation.generate closed book with gold answers scored, batches of 16, wall clock, best of repeat")


if __name__ == "__main__":
    main()
