"""Gradient Bank storage schemes on a trained run: size, encode and read time, scores, answer-NLL shift.

For each dataset of ``--run`` (its augmented ``--split`` file, every question unless ``--limit``):

1. the gradients of its distinct top-k passages are computed ONCE (``encode.gradient_batches``, timed);
2. they are written in every scheme into the run's bank folders ``offline/<topk>/<run>/<dataset>/<split>_all/
   <scheme>/`` (overwritten; timed: encoding on the device, checksums, shard writes, manifest);
3. ``sum_many`` over every question's top-k, in batches of the preset's generation batch size, is timed per
   scheme: page-cached (best of ``--repeat``) and cold (the shard files evicted from the page cache with
   ``posix_fadvise(DONTNEED)`` and the bank reopened before one pass; where the kernel ignores the hint this equals
   the cached time);
4. ``regrad`` is evaluated on every scheme's bank (``frontier.evaluate_schemes``: results/<run>/<dataset>/
   schemes/, schemes.csv — what 06_analyze's frontier figure reads), and ``shift`` (on the reference bank) and
   ``no_update`` in memory, for the paired answer-NLL effects of the same run.

Prints one JSON line per measurement, then a markdown table per dataset. Example (a demo-like run):

    REGRAD_WORK=/work/scratch/bank OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -m bench.bank_schemes \\
        --run demo --datasets popqa,hotpotqa,2wikimultihopqa,complexwebquestions
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from regrad_lib.answering import harness
from regrad_lib.bank import encode, reader, schemes
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, frontier
from regrad_lib.io import paths
from regrad_lib.reporting import effects, frontier_report

SCHEMES = ["fp32", "bf16", "int8", "int4", "int4-g128", "int2"]


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def evict(folder) -> None:
    """Drop the bank's files from the page cache (a hint; no privileges needed)."""
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_reads(folder, batches, device, repeat: int) -> tuple[float, float]:
    """Seconds of sum_many over all batches: page-cached (best of ``repeat``), and cold (evicted, reopened)."""
    gc.collect()
    evict(folder)
    start = time.perf_counter()
    with reader.GradientBank.open(folder) as b:
        for groups in batches:
            b.sum_many(groups, device)
        cold = time.perf_counter() - start
        warm = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            for groups in batches:
                b.sum_many(groups, device)
            warm = min(warm, time.perf_counter() - start)
    return warm, cold


def pairs(a: list[dict], b: list[dict], dataset: str, name_a: str, name_b: str) -> effects.PairedDifference:
    nll = lambda rows: {str(r["test_id"]): r["answer_nll"] for r in rows}  # noqa: E731
    return effects.paired_difference(nll(a), nll(b), dataset, name_a, name_b)


def bench_dataset(args, learner: Learner, dataset: str) -> list[dict]:
    items = encode.passages(dataset, args.split, args.topk, 0, args.limit)
    start = time.perf_counter()
    grads = [(ids, v) for ids, v in encode.gradient_batches(learner, items, args.batch_size)]
    grad_s = time.perf_counter() - start
    emit(name="gradients", dataset=dataset, passages=len(items), seconds=round(grad_s, 2),
         ms_per_passage=round(1000 * grad_s / len(items), 1))
    tasks_ = evaluate.load_tasks(dataset, args.split, args.topk, args.limit)
    size = learner.preset.generation.batch_size
    batches = [[list(t.passage_ids) for t in tasks_[i:i + size]] for i in range(0, len(tasks_), size)]
    source = {"run": args.run, "dataset": dataset, "split": args.split, "topk": args.topk, "start": 0,
              "end": args.limit, "batch_size": args.batch_size, "device": str(learner.device), "bench": "bank_schemes"}
    out = []
    for name in args.schemes:
        folder = paths.bank_dir(args.topk, args.run, dataset, args.split, name)
        start = time.perf_counter()
        with BankWriter.open(folder, reader.header_for(learner, name, **source), overwrite=True,
                                  config=learner.preset.to_dict()) as writer:
            for ids, vectors in grads:
                writer.append(ids, vectors)
        store_s = time.perf_counter() - start
        warm, cold = time_reads(folder, batches, learner.device, args.repeat)
        with reader.GradientBank.open(folder) as b:
            per_passage = b.bytes_per_passage
            on_disk = b.bytes_on_disk() / len(b)
        row = {"dataset": dataset, "scheme": name, "bytes_per_passage": per_passage,
               "bytes_on_disk_per_passage": round(on_disk), "encode_s": round(grad_s + store_s, 2),
               "store_s": round(store_s, 3), "sum_many_ms_per_question": round(1000 * warm / len(tasks_), 2),
               "sum_many_cold_ms_per_question": round(1000 * cold / len(tasks_), 2), "questions": len(tasks_)}
        emit(name="scheme", **row)
        out.append(row)
    scored = {r["scheme"]: r for r in frontier.evaluate_schemes(args.run, dataset, args.schemes, split=args.split,
                                                                 topk=args.topk, limit=args.limit, learner=learner,
                                                                 overwrite=True)}
    rows = {s: [json.loads(line)
                for line in paths.scheme_predictions_file(args.run, dataset, s).read_text().splitlines()]
            for s in args.schemes}
    reference = reader.open_bank(args.topk, args.run, dataset, args.split, args.reference, learner=learner)
    shift = harness.run_method("shift", learner, tasks_, bank=reference)
    plain = harness.run_method("no_update", learner, tasks_)
    ref_rows = rows[args.reference]
    vs_shift = pairs(ref_rows, shift, dataset, "regrad", "shift")
    vs_plain = pairs(ref_rows, plain, dataset, "regrad", "no_update")
    for row in out:
        mine = rows[row["scheme"]]
        delta = pairs(mine, ref_rows, dataset, row["scheme"], args.reference)
        diffs = [abs(a["answer_nll"] - b["answer_nll"]) for a, b in zip(mine, ref_rows)]
        flips = sum(a["prediction"] != b["prediction"] for a, b in zip(mine, ref_rows))
        row.update(em=scored[row["scheme"]]["em"], f1=scored[row["scheme"]]["f1"], delta_mean=delta.mean,
                   delta_se=delta.se, mean_abs_delta=sum(diffs) / len(diffs), answers_changed=flips,
                   regrad_minus_shift=vs_shift.mean, regrad_minus_shift_se=vs_shift.se,
                   regrad_minus_no_update=vs_plain.mean, regrad_minus_no_update_se=vs_plain.se,
                   ratio_to_effect=sum(diffs) / len(diffs) / abs(vs_plain.mean) if vs_plain.mean else math.nan)
        emit(name="quality", **{k: row[k] for k in ("dataset", "scheme", "em", "f1", "delta_mean", "delta_se",
                                                    "mean_abs_delta", "answers_changed", "ratio_to_effect")})
    return out


def table(rows: list[dict]) -> str:
    head = ("| dataset | scheme | bytes/passage | encode s (grad+store) | sum_many ms/q (cached / cold) | EM | F1 | "
            "ΔNLL vs fp32 (mean ± SE) | mean abs ΔNLL | answers changed | regrad − shift | regrad − no_update | "
            "mean abs Δ / abs(regrad − no_update) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['scheme']} | {r['bytes_per_passage']:,} | {r['encode_s']:.1f} "
            f"({r['store_s']:.2f}) | {r['sum_many_ms_per_question']:.1f} / {r['sum_many_cold_ms_per_question']:.1f} "
            f"| {r['em']:.1f} | {r['f1']:.1f} | {r['delta_mean']:+.1e} ± {r['delta_se']:.1e} | "
            f"{r['mean_abs_delta']:.1e} | {r['answers_changed']}/{r['questions']} | "
            f"{r['regrad_minus_shift']:+.4f} ± {r['regrad_minus_shift_se']:.4f} | "
            f"{r['regrad_minus_no_update']:+.4f} ± {r['regrad_minus_no_update_se']:.4f} | "
            f"{r['ratio_to_effect']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained run: outputs/<run>/ and its augmented dev files")
    ap.add_argument("--datasets", default="popqa,hotpotqa,2wikimultihopqa,complexwebquestions")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated; must include --reference")
    ap.add_argument("--reference", default=frontier_report.REFERENCE)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="first questions per dataset (default: all)")
    ap.add_argument("--batch-size", type=int, default=8, help="passages per forward/backward")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="page-cached sum_many passes; the best is reported")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.schemes = [schemes.parse(s).name for s in args.schemes.split(",")]
    if args.reference not in args.schemes:
        raise SystemExit(f"--schemes must include the reference {args.reference!r}")
    learner = Learner.from_run(args.run, args.device)
    emit(name="setup", run=args.run, model=learner.preset.learner.model_name_or_path, numel=sum(
        p.numel() for p in learner.phi.values()), device=str(learner.device), threads=torch.get_num_threads(),
        torch=torch.__version__, date=time.strftime("%F"))
    rows = [r for d in args.datasets.split(",") for r in bench_dataset(args, learner, d)]
    print(table(rows))


if __name__ == "__main__":
    main()
