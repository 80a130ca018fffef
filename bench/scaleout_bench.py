"""1 vs N processes: wall time of meta-training, encoding and evaluation, one JSON line per job.

Per model and step, one job per process count: 1 process is this script started plainly (no launcher, the
notebooks' default path); N > 1 runs it under ``accelerate launch --config_file configs/accelerate/local.yaml
--num_processes N`` (gloo on the CPU). Inside a job, rank 0 times the step between two barriers (model loaded,
data read): ``step_s``; the parent times the whole job (interpreter and library start-up, model load, process
group): ``job_s``. The steps are the library's own: ``train.train`` (its summary's loop time; no validation),
``encode.encode`` and ``evaluate.evaluate`` with a loaded learner. Before and after the jobs, ``capacity_python`` and
``capacity_matmul`` measure how much faster two CPU-bound processes get twice the work done than one process
gets it done (pure Python loops; one-thread fp32 matmuls): the ceiling of any 2-process speed-up at that moment
on a shared machine. Tasks and passages come from the bundled
mini-Wikipedia (synthetic questions: one distinct passage triple per record). Artifacts go to a temporary work
root. ``/proc/loadavg`` is recorded before each job: on a shared machine it explains most of the spread.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.scaleout_bench --model tiny
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.scaleout_bench --model smollm2 --train-tasks 8 --passages 24 \\
        --questions 32
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESETS = {"tiny": "tiny", "smollm2": "smollm2-135m-instruct"}
DATASET = "bench"


def records(n: int, offset: int, topk: int = 3) -> list[dict]:
    """``n`` records with ``topk`` distinct sample passages each (records ``offset`` … of the corpus triples)."""
    from regrad_lib.io import paths

    with paths.sample_corpus().open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        rows = [r for r in itertools.islice(rows, (offset + n) * topk) if len(r) == 3][offset * topk:]
    out = []
    for i in range(n):
        hits = rows[i * topk:(i + 1) * topk]
        out.append({"test_id": offset + i, "question": f"What is {hits[0][2]} known for?", "answers": [hits[0][2]],
                    "passages": [h[1] for h in hits], "passage_ids": [h[0] for h in hits],
                    "titles": [h[2] for h in hits], "scores": [1.0] * topk})
    return out


# --- one job --------------------------------------------------------------------------------------------------

def child(args) -> None:
    import torch

    from regrad_lib import config
    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.evaluation import evaluate
    from regrad_lib.io import distributed
    from regrad_lib.training import train

    job = distributed.init("cpu")
    learner = None if args.step == "train" else Learner.from_run(args.run)
    distributed.barrier()
    started = time.perf_counter()
    extra = {}
    if args.step == "train":
        preset = config.load_preset(PRESETS[args.model], {"train": {
            "max_steps": args.train_steps, "meta_batch_size": args.meta_batch, "tasks_per_forward": args.per_forward,
            "validation_size": 0, "save_steps": 10_000, "mixed_precision": "no"}})
        summary = train.train(args.run, preset, [DATASET], train_file="train_all", overwrite=True)
        extra = {"tasks": summary["tasks"], "loop_s": summary["wall_s"], "last_loss": summary["last_loss"]}
    elif args.step == "encode":
        encode.encode(args.run, DATASET, "dev", end=args.records, batch_size=args.batch_size, learner=learner,
                      overwrite=True)
        extra = {"passages": args.records * 3}
    else:
        out = evaluate.evaluate(args.run, DATASET, ["regrad"], limit=args.questions, learner=learner, overwrite=True)
        extra = {"questions": out["regrad"]["n"], "f1": out["regrad"]["f1"]}
    distributed.barrier()
    seconds = time.perf_counter() - started
    if job.main:
        print("BENCH " + json.dumps({"step_s": round(seconds, 2), **extra,
                                     "threads": torch.get_num_threads()}), flush=True)
    distributed.finish()


def run_job(args, step: str, run: str, processes: int, extra: list[str]) -> dict:
    from regrad_lib.io import paths
    from regrad_lib.runner import launch

    own = ["-m", "bench.scaleout_bench", "--child", step, "--run", run, "--model", args.model, *extra]
    if processes == 1:
        cmd = [sys.executable, *own]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(paths.resolve(launch.LOCAL_CONFIG)), "--num_processes", str(processes),
               "--main_process_port", str(launch.free_port()), *own]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=paths.repo_root())
    job_s = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{step} with {processes} process(es) failed (exit {done.returncode})")
    return {"model": args.model, "step": step, "processes": processes, "job_s": round(job_s, 2),
            **json.loads(lines[-1][len("BENCH "):]), "loadavg_before": load}


def spin(kind: str) -> None:
    if kind == "python":
        x = 0
        for i in range(20_000_000):
            x += i
    else:
        import torch
        torch.set_num_threads(1)
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        for _ in range(60):
            a @ b


def capacity() -> dict:
    """How much faster 2 CPU-bound processes finish 2 units of work than 1 process finishes 1, right now (pure
    Python loops; fp32 1024² matmuls on one thread each): the ceiling of any 2-process speed-up on this (shared)
    machine, for overhead-bound (tiny model) and FLOP-bound (SmolLM2) work."""
    import multiprocessing as mp

    def timed(kind: str, k: int) -> float:
        procs = [mp.get_context("fork").Process(target=spin, args=(kind,)) for _ in range(k)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return time.perf_counter() - started

    out = {}
    for kind in ("python", "matmul"):
        one, two = timed(kind, 1), timed(kind, 2)
        out[f"capacity_{kind}"] = round(2 * one / two, 2)
    return {**out, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def base_run(args) -> str:
    """A fixed 'trained' run (the preset's init with B ~ N(0, 0.01), generation batches of ``--gen-batch``) and its
    bank of the evaluated questions, encoded once by one process: copied for every encode/evaluate job."""
    import torch

    from regrad_lib import config
    from regrad_lib.bank import encode
    from regrad_lib.core.learner import Learner
    from regrad_lib.io import paths

    preset = config.load_preset(PRESETS[args.model], {"generation": {"batch_size": args.gen_batch}})
    learner = Learner.create(preset)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.01)
    preset.save(paths.output_dir("base"))
    learner.save(paths.output_dir("base") / paths.META_STATE)
    if "evaluate" in args.steps:
        encode.encode("base", DATASET, "dev", end=args.questions, batch_size=args.batch_size, learner=learner)
    return "base"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", nargs="+", default=["train", "encode", "evaluate"])
    parser.add_argument("--train-tasks", type=int, default=32, help="training tasks (one epoch of meta batches)")
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--per-forward", type=int, default=2, help="tasks_per_forward")
    parser.add_argument("--passages", type=int, default=192, help="passages to encode (3 per record)")
    parser.add_argument("--batch-size", type=int, default=8, help="encode batch size")
    parser.add_argument("--questions", type=int, default=64, help="questions to evaluate (regrad)")
    parser.add_argument("--gen-batch", type=int, default=16, help="questions per generation batch")
    parser.add_argument("--work", help="work root (default: a temporary folder, removed afterwards)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--train-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.step = args.child
        return child(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="scaleout-bench-"))
    os.environ["REGRAD_WORK"] = str(work)
    from regrad_lib.core import tiny_model
    from regrad_lib.io import artifacts, paths

    tiny_model.ensure_tiny_model()
    n_records = args.passages // 3
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"), records(args.train_tasks, 0))
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), records(max(n_records, args.questions),
                                                                        args.train_tasks))
    train_steps = -(-args.train_tasks // args.meta_batch)
    base = base_run(args)
    print(json.dumps({"model": args.model, **capacity()}), flush=True)
    rows = []
    try:
        for n in args.processes:
            common = ["--train-steps", str(train_steps), "--meta-batch", str(args.meta_batch), "--per-forward",
                      str(args.per_forward), "--records", str(n_records), "--batch-size", str(args.batch_size),
                      "--questions", str(args.questions)]
            for step in args.steps:
                run = f"{step}-{n}"
                if step != "train":
                    shutil.copytree(paths.output_dir(base), paths.output_dir(run), dirs_exist_ok=True)
                if step == "evaluate":
                    shutil.copytree(paths.bank_split_dir(3, base, DATASET, "dev"),
                                    paths.bank_split_dir(3, run, DATASET, "dev"),
                                    dirs_exist_ok=True)
                row = run_job(args, step, run, n, common)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"model": args.model, **capacity()}), flush=True)
    by = {(r["step"], r["processes"]): r for r in rows}
    for step in args.steps:
        base = by.get((step, args.processes[0]))
        for n in args.processes[1:]:
            if base and (step, n) in by:
                print(json.dumps({"model": args.model, "step": step, "ratio": f"{n} vs {args.processes[0]}",
                                  "step_speedup": round(base["step_s"] / by[(step, n)]["step_s"], 2),
                                  "job_speedup": round(base["job_s"] / by[(step, n)]["job_s"], 2)}), flush=True)


if __name__ == "__main__":
    main()
