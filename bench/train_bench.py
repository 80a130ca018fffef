"""Meta-training throughput: tasks/s and peak memory of regrad_lib.training.train's meta step, synthetic tasks.

Task shapes as ../shared/bench/ref_bench.py: ``--topk`` passages of ``--seq-len`` (150) tokens, a ``--prompt-len``
(60) token prompt and a ``--answer-len`` (5) token answer per task, ``--meta-batch`` tasks per optimizer step. The
step is exactly 03_train's: per chunk of ``tasks_per_forward`` tasks ``train.chunk_losses`` (one batched
forward/backward of all passages, second order), backward of the mean, then ``schedule.optimizer_step`` (clip 0.5 +
AdamW). "batched" uses the preset's tasks_per_forward, "sequential" one task per forward (same code).

CPU (default): every (model, variant, threads) runs in its own child process, so peak RSS is its own:
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.train_bench
GPU (a later session; random Llama-3.2-1B-shaped model, the public 1B LoRA preset, bf16 autocast), beside the
reference meta step on the SAME weights and tasks in the same process (losses compared step by step):
    .venv/bin/python -m bench.train_bench --device cuda --model llama-1b-random --ref ../shared/bench/ref_bench.py
``--model ref-tiny-random --ref ...`` runs that comparison on ref_bench's tiny model (CPU check, fp32).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from regrad_lib import config
from regrad_lib.core import lora, regrad
from regrad_lib.core.learner import Learner
from regrad_lib.data.prompts import IGNORE
from regrad_lib.training import schedule, train

PRESETS = {"tiny": "tiny", "smollm2": "smollm2-135m-instruct", "llama-1b-random": "llama-3.2-1b-instruct",
           "ref-tiny-random": "llama-3.2-1b-instruct"}


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- synthetic tasks -------------------------------------------------------------------------------------

def synthetic_tasks(n: int, low: int, high: int, bos: int | None, args, seed: int = 1234) -> list[dict]:
    """ref_bench's DataGen shapes: ``{"train_data": [passage dicts], "val_data": qa dict}``, each ``[1, len]``."""
    g = torch.Generator().manual_seed(seed)

    def ids(length, with_bos=True):
        x = torch.randint(low, high, (1, length), generator=g)
        if with_bos and bos is not None:
            x[0, 0] = bos
        return x

    out = []
    for _ in range(n):
        passages = []
        for _ in range(args.topk):
            x = ids(args.seq_len)
            passages.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x})
        p, a = ids(args.prompt_len), ids(args.answer_len, with_bos=False)
        qa_ids = torch.cat([p, a], dim=1)
        out.append({"train_data": passages, "val_data": {
            "input_ids": qa_ids, "attention_mask": torch.ones_like(qa_ids),
            "labels": torch.cat([torch.full_like(p, IGNORE), a], dim=1)}})
    return out


def task_batch(tasks: list[dict], device) -> regrad.TaskBatch:
    """Our TaskBatch of equal-length synthetic tasks (no padding needed)."""
    rows = [p for t in tasks for p in t["train_data"]]
    passages = regrad.TokenBatch(*(torch.cat([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")))
    qa = regrad.TokenBatch(*(torch.cat([t["val_data"][k] for t in tasks])
                             for k in ("input_ids", "attention_mask", "labels")))
    group = torch.tensor([i for i, t in enumerate(tasks) for _ in t["train_data"]])
    return regrad.TaskBatch(passages, group, qa).to(device)


# --- learners --------------------------------------------------------------------------------------------

def _ref_module(path: str):
    spec = importlib.util.spec_from_file_location("ref_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_llama_learner(ref, tiny: bool, device: torch.device, precision: str):
    """ref_bench's model (weights and LoRA values copied from its learner) as our Learner; and the ref learner."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ref_learner, spec, special_start = ref.build_learner(tiny, "eager", device)
    layers = spec["num_hidden_layers"]
    preset = config.load_preset("llama-3.2-1b-instruct", {
        "peft": {"layers_to_transform": list(range(layers // 2, layers))},
        "train": {"mixed_precision": precision}})
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**spec, attn_implementation="sdpa"))
    lora.attach(model, preset.peft)
    source = ref.hf_model(ref_learner).state_dict()
    mapped = {k.replace(".base_layer.", ".base.").replace(".lora_A.default.weight", ".lora_A")
              .replace(".lora_B.default.weight", ".lora_B"): v for k, v in source.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise RuntimeError(f"weight mapping failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.requires_grad_(False)
    if precision != "no":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        for name, p in model.named_parameters():
            if not name.endswith(("lora_A", "lora_B")):
                p.data = p.data.to(dtype)
        ref.cast_learner(ref_learner, dtype, torch.float32, buffers=False)
    for p in lora.parameters(model).values():
        p.requires_grad_(True)
    phi = lora.parameters(model)
    alpha = regrad.StepSizes(phi, preset.learner.alpha_mode, preset.learner.init_alpha).to(device)
    learner = Learner(model.eval(), None, preset, phi, alpha, device)
    return learner, ref_learner, special_start, spec["bos_token_id"]


def preset_learner(name: str, device: torch.device, tasks_per_forward: int | None):
    preset = config.load_preset(PRESETS[name])
    if tasks_per_forward:
        preset = preset.replace(train={"tasks_per_forward": tasks_per_forward})
    learner = Learner.create(preset, str(device))
    with torch.no_grad():  # a trained-like state: B != 0, so every LoRA tensor gets a gradient
        for n, p in learner.phi.items():
            if n.endswith("lora_B"):
                p.normal_(0.0, 0.01)
    vocab = learner.model.config.vocab_size
    return learner, min(vocab, len(learner.tokenizer)) - 1, learner.tokenizer.bos_token_id


# --- measurements ----------------------------------------------------------------------------------------

def our_steps(learner: Learner, tasks: list[dict], meta_batch: int, tpf: int,
              lr_of=None) -> tuple[list[float], list[float]]:
    """03_train's optimizer steps over ``tasks``; (per-step mean losses, per-step seconds)."""
    if not hasattr(learner, "_bench_opt"):
        learner._bench_opt, learner._bench_params = schedule.make_optimizer(learner)
        learner._bench_step = 0
    opt, params = learner._bench_opt, learner._bench_params
    losses, times = [], []
    for i in range(0, len(tasks), meta_batch):
        batch = tasks[i:i + meta_batch]
        sync(learner.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(0, len(batch), tpf):
            chunk = train.chunk_losses(learner, task_batch(batch[j:j + tpf], learner.device))
            (chunk.sum() / len(batch)).backward()
            total += float(chunk.detach().sum())
        lr = lr_of(learner._bench_step) if lr_of else learner.preset.train.learning_rate
        schedule.optimizer_step(opt, params, learner.preset.train.max_grad_norm, lr)
        learner._bench_step += 1
        sync(learner.device)
        times.append(time.perf_counter() - t0)
        losses.append(total / len(batch))
    return losses, times


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)}
    return {"peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def one(args) -> None:
    """One measurement of our meta step (this process)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    learner, high, bos = preset_learner(args.model, device, args.tasks_per_forward)
    tpf = learner.preset.train.tasks_per_forward
    tasks = synthetic_tasks(args.tasks + args.meta_batch, 3, high, bos, args)
    our_steps(learner, tasks[:args.meta_batch], args.meta_batch, tpf)  # warm-up (also creates AdamW state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = our_steps(learner, tasks[args.meta_batch:], args.meta_batch, tpf)
    wall = sum(times)
    emit(name="meta_train", model=args.model, preset=learner.preset.name, device=str(device),
         threads=torch.get_num_threads(), variant="sequential" if tpf == 1 else "batched", tasks_per_forward=tpf,
         meta_batch=args.meta_batch, tasks=args.tasks, tasks_per_s=round(args.tasks / wall, 3),
         ms_per_task=round(1000 * wall / args.tasks, 1), seq_len=args.seq_len, prompt_len=args.prompt_len,
         answer_len=args.answer_len, topk=args.topk, mean_loss=round(sum(losses) / len(losses), 5),
         second_order=not learner.preset.learner.first_order, **peak_memory(device))


def compare(args) -> None:
    """Our meta step beside the reference's on the same weights, tasks and lr schedule (same process)."""
    device = torch.device(args.device)
    ref = _ref_module(args.ref)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    tiny = args.model == "ref-tiny-random"
    precision = "bf16" if device.type == "cuda" else "no"
    learner, ref_learner, special_start, bos = random_llama_learner(ref, tiny, device, precision)
    tpf = args.tasks_per_forward or learner.preset.train.tasks_per_forward
    tasks = synthetic_tasks(args.tasks + args.meta_batch, 0, special_start, bos, args)
    common = dict(model=args.model, device=str(device), meta_batch=args.meta_batch, seq_len=args.seq_len,
                  prompt_len=args.prompt_len, answer_len=args.answer_len, topk=args.topk, precision=precision)

    # reference: its own meta_step, scheduler (1000 steps, 10% warm-up) and AdamW
    st = ref.RefState(device, torch.bfloat16 if precision == "bf16" else None)
    ref_opt = torch.optim.AdamW(ref_learner.parameters(), lr=ref.META_LR)
    ref_sched = ref.make_scheduler(ref_opt)
    ref_losses, ref_times = [], []
    for i in range(0, len(tasks), args.meta_batch):
        sync(device)
        t0 = time.perf_counter()
        ref_losses.append(ref.meta_step(ref_learner, tasks[i:i + args.meta_batch], st, ref_opt, ref_sched, device))
        sync(device)
        ref_times.append(time.perf_counter() - t0)
    ref_mem = peak_memory(device)
    del ref_opt, ref_learner
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ref_args = config.TrainArgs(learning_rate=ref.META_LR)
    ours, our_times = our_steps(learner, tasks, args.meta_batch, tpf,
                                lambda s: schedule.learning_rate(s, ref_args, 1000))
    timed = len(tasks) - args.meta_batch  # the first step is warm-up for both
    ref_rate, our_rate = timed / sum(ref_times[1:]), timed / sum(our_times[1:])
    diffs = [abs(a - b) for a, b in zip(ours, ref_losses)]
    emit(name="meta_train_ref", tasks_per_s=round(ref_rate, 3), **ref_mem, **common)
    emit(name="meta_train_ours", tasks_per_s=round(our_rate, 3), tasks_per_forward=tpf, **peak_memory(device),
         **common)
    emit(name="meta_train_speedup", value=round(our_rate / ref_rate, 2), losses_ours=[round(x, 5) for x in ours],
         losses_ref=[round(x, 5) for x in ref_losses], max_abs_loss_diff=max(diffs),
         same_loss_to_1e_3=max(diffs) < 1e-3, **common)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=sorted(PRESETS), help="one model (default on CPU: tiny and smollm2)")
    ap.add_argument("--tasks", type=int, help="timed tasks (default: tiny 64, smollm2 16, 1B 64)")
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--tasks-per-forward", type=int, help="default: the preset's; 1 = sequential")
    ap.add_argument("--seq-len", type=int, default=150)
    ap.add_argument("--prompt-len", type=int, default=60)
    ap.add_argument("--answer-len", type=int, default=5)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--ref", help="path of ref_bench.py: compare with the reference meta step (same process)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.ref:
        args.model = args.model or "llama-1b-random"
        args.tasks = args.tasks or (16 if args.model == "ref-tiny-random" else 64)
        compare(args)
        return 0
    if args.one:
        args.tasks = args.tasks or {"tiny": 64, "smollm2": 16}.get(args.model, 64)
        one(args)
        return 0
    runs = [(args.model, args.tasks_per_forward, args.threads)] if args.model else [
        ("tiny", None, 1), ("tiny", 1, 1), ("smollm2", None, 1), ("smollm2", 1, 1), ("smollm2", None, 2)]
    for model, tpf, threads in runs:
        cmd = [sys.executable, "-m", "bench.train_bench", "--one", "--model", model, "--device", args.device,
               "--threads", str(threads),
               "--meta-batch", str(args.meta_batch), "--seq-len", str(args.seq_len), "--prompt-len",
               str(args.prompt_len), "--answer-len", str(args.answer_len), "--topk", str(args.topk)]
        cmd += ["--tasks-per-forward", str(tpf)] if tpf else []
        cmd += ["--tasks", str(args.tasks)] if args.tasks else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
