"""ReGrad inference speed: batched (per-row LoRA weights) vs one question at a time; one JSON line per measurement.

Both paths are the real evaluation harness, ``harness.run_method("regrad", ...)``: the top-k gradients are read
from a real Gradient Bank (bf16, memory-mapped, in a temporary folder) and summed, ``phi'_q`` is formed
(equation 2), the answer is decoded greedily and the gold answer's NLL is computed (as ref_bench.py's
``_loss_evaluate``). Only ``batch_size`` differs: 1 (one question at a time) or ``--batch-size``.

Workload (ref_bench.py's inference part): prompts of about ``--prompt-len`` tokens (chat template + a synthetic
question), ``--new-tokens`` 20 new tokens, top-3 passages per question. By default every question decodes the
full 20 tokens (the newline/EOS stop is switched off, as a random model never stops either); ``--stop`` keeps
the real stop rule.

Models (``--model``, comma-separated):
- ``tiny``, ``smollm2-135m-instruct``: the presets' models (LoRA B random, std 0.01), CPU;
- ``llama-1b-random``: a randomly initialised Llama-3.2-1B-shaped model with the public 1B LoRA preset
  (``configs/llama-3.2-1b-instruct``; bf16 base on a GPU), no download; the offline tiny test tokenizer makes
  the prompts (its ids are valid in the 128k vocabulary). Run it beside ``ref_bench.py --only infer``.

Usage:
  OMP_NUM_THREADS=1 .venv/bin/python -m bench.inference_bench                      # tiny + smollm2 on CPU
  .venv/bin/python -m bench.inference_bench --device cuda --model llama-1b-random --questions 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from regrad_lib import config, testing
from regrad_lib.answering import harness
from regrad_lib.bank import reader
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import generation, lora, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.io import paths


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_learner(name: str, device: str) -> Learner:
    """The learner of a preset, or the random 1B-shaped one; LoRA B made non-zero (a 'trained' learner)."""
    if name == "llama-1b-random":
        learner = testing.random_1b_learner(device)
    else:
        learner = Learner.create(config.load_preset("tiny" if name == "tiny" else name), device)
    torch.manual_seed(0)
    with torch.no_grad():
        for key, p in learner.phi.items():
            if key.endswith("lora_B"):
                p.normal_(0.0, 0.01)
    return learner


def questions(tokenizer, n: int, prompt_len: int, max_prompt_len: int) -> list[str]:
    """``n`` synthetic questions whose chat prompt is about ``prompt_len`` tokens."""
    from regrad_lib.config import LearnerConfig
    from regrad_lib.data import prompts
    words = (paths.sample_corpus().read_text(encoding="utf-8").split())[1000:60000]
    out = []
    for q in range(n):
        start, k = (q * 37) % (len(words) - 200), 1
        cfg = LearnerConfig(max_prompt_len=max_prompt_len)
        while len(prompts.prompt_ids(tokenizer, " ".join(words[start:start + k]) + "?", None, cfg)) \
                < prompt_len and k < 200:
            k += 1
        out.append(" ".join(words[start:start + k]) + "?")
    return out


def make_bank(learner: Learner, folder: Path, passages: int) -> reader.GradientBank:
    """A real bf16 Gradient Bank of ``passages`` random gradients (the read path is what is measured)."""
    head = reader.header_for(learner, "bf16", bench="inference_bench")
    writer = BankWriter.open(folder, head, overwrite=True)
    numel = lora.numel(learner.phi)
    generator = torch.Generator().manual_seed(1)
    for start in range(0, passages, 16):
        ids = [f"p{i}" for i in range(start, min(passages, start + 16))]
        writer.append(ids, 1e-3 * torch.randn(len(ids), numel, generator=generator))
    writer.close()
    return reader.GradientBank.open(folder, learner=learner)


def timed(learner, items, store, batch_size: int) -> tuple[float, list[dict]]:
    sync(learner.device)
    start = time.perf_counter()
    rows = harness.run_method("regrad", learner, items, bank=store, batch_size=batch_size)
    sync(learner.device)
    return time.perf_counter() - start, rows


def bench_model(name: str, args) -> None:
    device = torch.device(args.device)
    t0 = time.perf_counter()
    learner = build_learner(name, args.device)
    preset = learner.preset
    learner.preset = preset.replace(generation={"max_new_tokens": args.new_tokens})
    texts = questions(learner.tokenizer, args.questions + args.warmup, args.prompt_len, preset.learner.max_prompt_len)
    npass = max(args.passages, args.topk)
    items = [task_batches.Task(test_id=i, question=q, answers=("an answer",), passages=(("t", "x"),) * args.topk,
                        passage_ids=tuple(f"p{(i * 7 + j * 13) % npass}" for j in range(args.topk)))
             for i, q in enumerate(texts)]
    prompt_lens = [len(harness.prompt_of(learner, t, False).ids) for t in items]
    with tempfile.TemporaryDirectory(prefix="regrad-bench-") as tmp:
        store = make_bank(learner, Path(tmp) / "bank", npass)
        setup_s = time.perf_counter() - t0
        common = {"model": name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "dtype": str(next(learner.model.parameters()).dtype).replace("torch.", ""),
                  "threads": torch.get_num_threads(), "topk": args.topk, "new_tokens": args.new_tokens,
                  "stop_rule": args.stop, "mean_prompt_len": round(sum(prompt_lens) / len(prompt_lens), 1),
                  "lora_values": lora.numel(learner.phi), "torch": torch.__version__, "setup_s": round(setup_s, 1)}
        warm, measured = items[:args.warmup], items[args.warmup:]
        timed(learner, warm, store, args.batch_size)
        timed(learner, warm[:1], store, 1)
        single_n = min(args.single_questions, len(measured))
        t_single, rows_single = timed(learner, measured[:single_n], store, 1)
        t_batch, rows_batch = timed(learner, measured, store, args.batch_size)
        same = [r["generated"] for r in rows_batch[:single_n]] == [r["generated"] for r in rows_single]
        nll_diff = max(abs(a["answer_nll"] - b["answer_nll"]) for a, b in zip(rows_batch, rows_single))
        tokens = [len(learner.tokenizer(r["generated"], add_special_tokens=False)["input_ids"]) for r in rows_batch]
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
        emit(name="inference_one_at_a_time", unit="questions/s", value=round(single_n / t_single, 3), n=single_n,
             batch_size=1, ms_per_question=round(1000 * t_single / single_n, 1), **common)
        emit(name="inference_batched", unit="questions/s", value=round(len(measured) / t_batch, 3), n=len(measured),
             batch_size=args.batch_size, ms_per_question=round(1000 * t_batch / len(measured), 1),
             mean_new_tokens_retokenized=round(sum(tokens) / len(tokens), 1), peak_GiB=peak, **common)
        emit(name="speedup_batched_vs_one_at_a_time", unit="x",
             value=round((len(measured) / t_batch) / (single_n / t_single), 2), same_generations=same,
             max_answer_nll_diff=nll_diff, model=name, device=common["device"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny,smollm2-135m-instruct",
                        help="comma list of tiny, smollm2-135m-instruct, llama-1b-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--questions", type=int, default=64, help="questions timed in the batched path")
    parser.add_argument("--single-questions", type=int, default=16, help="questions timed one at a time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--passages", type=int, default=64, help="distinct passages in the temporary bank")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--stop", action="store_true", help="keep the newline/EOS stop rule (default: 20 tokens)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.stop:   # the same workload for every question: exactly --new-tokens new tokens
        generation.stop_reached = lambda text: False
        generation.eos_ids = lambda model, tokenizer: set()
    for name in args.model.split(","):
        bench_model(name.strip(), args)


if __name__ == "__main__":
    main()
