"""What the Gradient Bank's integrity checks cost (README "Reliability", BENCHMARKS "Reads"): the CRC-32 of every
row read, its share of a ``sum_many``, and the sha256 of ``GradientBank.verify``.

Usage (JSON lines on stdout; 1 thread: the checks run on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.integrity_bench [--rows 48] [--repeat 5] [--schemes bf16,int4]

Per scheme, one bank of ``--rows`` random Llama-3.2-1B-layout rows (the public 1B LoRA preset: 3,932,160 values)
in a temporary folder; then, page-cached, interleaved ``--repeat`` times (median CPU time of this process):

- ``sum_many`` of 32 questions × 3 scattered entries (what a batch of the evaluation reads: the distinct rows
  read, CRC-checked, decoded and summed in fp32), as in bench/encode_bench.py's read lines;
- ``bank_format.row_checksums`` alone over the same distinct rows' stored bytes (the check inside ``sum_many``):
  GB/s of stored bytes, ms per row, and its share of the ``sum_many``;
- ``bank_format.sha256_file`` over every shard (what ``verify`` adds per byte): GB/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from regrad_lib import testing
from regrad_lib.bank import (
    on_disk,
    reader,
)
from regrad_lib.bank.on_disk import row_checksums, sha256_file
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import lora
from regrad_lib.reporting import reference


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def build(folder: Path, scheme: str, rows: int, layout) -> reader.GradientBank:
    phi = lora.unflatten(torch.zeros(sum(a * b for _, (a, b) in layout)), layout)
    head = on_disk.header(model="llama-1b-random", model_id="llama-1b-random", model_revision=None,
                        preset=testing.PRESET_1B, phi=phi, meta_hash="random", scheme=scheme)
    writer = BankWriter.open(folder, head, overwrite=True)
    g = torch.Generator().manual_seed(0)
    for start in range(0, rows, 8):
        n = min(8, rows - start)
        writer.append([f"p{start + j}" for j in range(n)], torch.randn(n, lora.numel(phi), generator=g) * 1e-3)
    writer.close()
    return reader.GradientBank.open(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=48, help="rows per bank")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved timed passes")
    ap.add_argument("--schemes", default="bf16,int4")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layout = lora.layout(testing.random_1b_learner("meta").phi)
    emit(name="machine", **reference.machine())
    with tempfile.TemporaryDirectory(prefix="integrity-bench-") as tmp:
        banks = {s: build(Path(tmp) / s, s, args.rows, layout) for s in args.schemes.split(",")}
        ids = banks[next(iter(banks))].ids()
        groups = [[ids[(3 * q + k) * 7 % len(ids)] for k in range(3)] for q in range(32)]
        unique = list(dict.fromkeys(p for g in groups for p in g))
        times: dict[tuple[str, str], list[float]] = {}
        stored = {s: b.stored(unique) for s, b in banks.items()}     # warms the page cache too
        for _ in range(args.repeat):
            for s, b in banks.items():
                files = sorted(b.path.glob("*.safetensors"))
                # each timed call runs at once, inside this iteration: the defaults only say so to the linter
                times.setdefault((s, "sum_many"), []).append(cpu_seconds(lambda b=b: b.sum_many(groups)))
                times.setdefault((s, "crc"), []).append(cpu_seconds(lambda s=s: row_checksums(unique, stored[s])))
                times.setdefault((s, "sha256"), []).append(cpu_seconds(lambda fs=files: [sha256_file(f) for f in fs]))
        for s, b in banks.items():
            crc_bytes = sum(t.numel() * t.element_size() for t in stored[s].values())
            shard_bytes = sum(f.stat().st_size for f in b.path.glob("*.safetensors"))
            crc, total, sha = (statistics.median(times[(s, k)]) for k in ("crc", "sum_many", "sha256"))
            emit(name="crc32", scheme=s, rows=len(unique), bytes_per_row=crc_bytes // len(unique),
                 GB_per_s=round(crc_bytes / crc / 1e9, 2), ms_per_row=round(1000 * crc / len(unique), 3),
                 crc_ms=round(1000 * crc, 1), sum_many_ms=round(1000 * total, 1),
                 share_of_sum_many=round(crc / total, 3), repeat=args.repeat, clock="process CPU time, median",
                 op="row_checksums over the distinct rows of sum_many(32 questions x 3 entries), page-cached")
            emit(name="sha256", scheme=s, GB_per_s=round(shard_bytes / sha / 1e9, 2), bytes=shard_bytes,
                 repeat=args.repeat, clock="process CPU time, median", op="sha256_file over every shard, page-cached")


if __name__ == "__main__":
    main()
