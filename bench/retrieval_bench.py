"""Retrieval quality and speed report: prints one JSON line per measurement.

1. Mini-Wikipedia (``data/sample``): build time, index size, queries/s, and recall@k of the gold passages
   (``gold_passages*.json``, by passage id) for HotpotQA dev/train, 2WikiMultihopQA dev and PopQA.
2. Synthetic corpus: N passages (default 1,000,000) of ~100 words drawn from a Zipf vocabulary, written to a
   temporary DPR TSV and indexed through the real ``retrieval.build`` path in a child process (its peak RSS is the
   build's); then index size, queries/s (12- and 6-word queries, 1 and 2 search threads), and a linear extrapolation to
   21M.

Usage: OMP_NUM_THREADS=1 .venv/bin/python -m bench.retrieval_bench [--passages 1000000] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DPR_PASSAGES = 21_015_324
KS = (1, 3, 5, 10)


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def questions_and_gold(data: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Question texts and gold passage ids per set, in the order of the gold files (entry i = question i)."""
    def gold(name):
        return [[str(x) for x in g["gold_ids"]] for g in json.loads((data / name).read_text())]

    def questions(name):
        return [r["question"] for r in json.loads((data / name).read_text())]

    with (data / "popqa/popQA.tsv").open(newline="") as f:
        popqa = [row["question"] for row in csv.DictReader(f, delimiter="\t")]
    return {
        "hotpotqa_dev": (questions("hotpotqa/hotpot_dev_distractor_v1.json"), gold("hotpotqa/gold_passages_dev.json")),
        "hotpotqa_train": (questions("hotpotqa/hotpot_train_v1.1.json"), gold("hotpotqa/gold_passages_train.json")),
        "2wikimultihopqa_dev": (questions("2wikimultihopqa/dev.json"), gold("2wikimultihopqa/gold_passages.json")),
        "popqa": (popqa, gold("popqa/gold_passages.json")),
    }


def queries_per_second(retriever, queries: list[str], k: int = 3, min_seconds: float = 3.0) -> float:
    retriever.search(queries[:50], k)   # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        retriever.search(queries, k)
        done += len(queries)
    return done / (time.perf_counter() - start)


def mini(args) -> None:
    from regrad_lib import retrieval

    data = REPO / args.data
    start = time.perf_counter()
    r = retrieval.build(data / "psgs_w100.tsv", "bench-miniwiki", rebuild=True, threads=args.threads,
                        heap_mb=args.heap_mb)
    build_s = time.perf_counter() - start
    from regrad_lib.io import paths
    emit(bench="miniwiki_build", passages=r.count(), build_s=round(build_s, 2),
         index_mb=round(dir_size(paths.index_dir("bench-miniwiki")) / 2**20, 1))
    all_questions = []
    for name, (questions, gold) in questions_and_gold(data).items():
        hits = r.search(questions, max(KS))
        row = {"bench": "miniwiki_recall", "set": name, "questions": len(questions)}
        for k in KS:
            top = [{h.passage_id for h in hs[:k]} for hs in hits]
            row[f"any@{k}"] = round(sum(bool(t & set(g)) for t, g in zip(top, gold)) / len(gold), 3)
            row[f"all@{k}"] = round(sum(set(g) <= t for t, g in zip(top, gold)) / len(gold), 3)
        emit(**row)
        all_questions += questions
    for threads in (1, 2):
        rt = retrieval.open("bench-miniwiki", search_threads=threads)
        emit(bench="miniwiki_qps", search_threads=threads, queries=len(all_questions), k=3,
             qps=round(queries_per_second(rt, all_questions), 1))


def vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 11, size)
    words = {"".join(rng.choice(letters, n)) for n in lengths}
    return np.array(sorted(words), dtype=object)


def synthetic(args) -> None:
    rng = np.random.default_rng(0)
    vocab = vocabulary(args.vocab, rng)
    rng.shuffle(vocab)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.07
    cdf = np.cumsum(weights) / weights.sum()
    tmp = Path(tempfile.mkdtemp(prefix="regrad-bench-", dir=args.tmp))
    tsv = tmp / "synthetic.tsv"
    start = time.perf_counter()
    with tsv.open("w") as f:
        f.write("id\ttext\ttitle\n")
        for lo in range(0, args.passages, 10_000):
            n = min(10_000, args.passages - lo)
            lengths = rng.integers(80, 121, n)
            ranks = np.searchsorted(cdf, rng.random(int(lengths.sum())))
            titles = np.searchsorted(cdf, rng.random(2 * n)).reshape(n, 2)
            words, offset = vocab[ranks], 0
            for i in range(n):
                text = " ".join(words[offset:offset + lengths[i]])
                offset += lengths[i]
                f.write(f"{lo + i}\t{text}\t{vocab[titles[i, 0]].title()} {vocab[titles[i, 1]]}\n")
    emit(bench="synthetic_corpus", passages=args.passages, vocab=len(vocab), zipf_s=1.07,
         tsv_mb=round(tsv.stat().st_size / 2**20, 1), generate_s=round(time.perf_counter() - start, 1))

    env = {**os.environ, "REGRAD_WORK": str(tmp)}
    child = subprocess.run([sys.executable, "-m", "bench.retrieval_bench", "--child-build", str(tsv), "--threads",
                            str(args.threads), "--heap-mb", str(args.heap_mb)], env=env, capture_output=True, text=True,
                           cwd=REPO)
    if child.returncode:
        sys.exit(f"child build failed:\n{child.stderr[-3000:]}")
    built = json.loads(child.stdout.strip().splitlines()[-1])
    index_bytes = dir_size(tmp / "indexes" / "synthetic")
    emit(bench="synthetic_build", passages=args.passages, threads=args.threads, heap_mb=args.heap_mb,
         build_s=built["build_s"], peak_rss_mib=built["peak_rss_mib"], index_mb=round(index_bytes / 2**20, 1))

    os.environ["REGRAD_WORK"] = str(tmp)
    from regrad_lib import retrieval

    qrng = np.random.default_rng(1)
    # question-like queries: n content words (analysed terms per question on the sample: HotpotQA 11,
    # 2Wiki 9, PopQA 5); the 50 most frequent ranks play the stop words that a question loses in analysis
    def sample_queries(n_words):
        return [" ".join(vocab[50 + np.searchsorted(cdf[50:] - cdf[49], qrng.random(n_words) * (1 - cdf[49]))])
                for _ in range(500)]

    qps = {}
    for n_words in (12, 6):
        queries = sample_queries(n_words)
        for threads in (1, 2):
            r = retrieval.open("synthetic", search_threads=threads)
            qps[n_words, threads] = round(queries_per_second(r, queries, min_seconds=5.0), 1)
            emit(bench="synthetic_qps", passages=r.count(), query_words=n_words, search_threads=threads, k=3,
                 qps=qps[n_words, threads])
    scale = DPR_PASSAGES / args.passages
    emit(bench="extrapolated_21M", passages=DPR_PASSAGES, build_h=round(built["build_s"] * scale / 3600, 2),
         index_gb=round(index_bytes * scale / 2**30, 1), peak_rss_mib="bounded by heap_mb + reader (as measured)",
         qps_12_words_lower_bound=round(max(qps[12, 1], qps[12, 2]) / scale, 1))
    if not args.keep:
        import shutil
        shutil.rmtree(tmp)


def child_build(args) -> None:
    from regrad_lib import retrieval

    start = time.perf_counter()
    r = retrieval.build(args.child_build, "synthetic", threads=args.threads, heap_mb=args.heap_mb)
    build_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    print(json.dumps({"build_s": round(build_s, 1), "peak_rss_mib": round(peak), "count": r.count()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/sample", help="mini-Wikipedia folder, repo-relative")
    p.add_argument("--passages", type=int, default=1_000_000, help="synthetic corpus size")
    p.add_argument("--vocab", type=int, default=200_000, help="synthetic vocabulary size")
    p.add_argument("--threads", type=int, default=2, help="indexing threads")
    p.add_argument("--heap-mb", type=int, default=256, help="tantivy writer heap (total)")
    p.add_argument("--tmp", default=None, help="folder for the temporary corpus and indexes")
    p.add_argument("--skip-mini", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary corpus and index")
    p.add_argument("--child-build", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_build:
        return child_build(args)
    if not args.skip_mini:
        with tempfile.TemporaryDirectory(prefix="regrad-bench-mini-", dir=args.tmp) as work:
            os.environ["REGRAD_WORK"] = work
            mini(args)
    if not args.skip_synthetic:
        synthetic(args)


if __name__ == "__main__":
    main()
