"""Gradient Bank encoding speed and size: prints one JSON line per measurement.

Per model, with passages of ``--seq-len`` (150) tokens:
- ``one_by_one``: one passage per forward/backward (:func:`regrad.per_passage_gradients` on a batch of 1, then
  flatten, cast to the bf16 storage dtype, copy to the CPU): how the reference encodes;
- ``batched``: ``B`` passages per forward/backward, same steps (per-example LoRA gradients from one pass);
- ``encode`` (CPU presets): the whole :func:`encode.encode` into a fresh bank (read the augmented file,
  tokenise, length-sort, batch, gradients, shard writes, manifest);
- ``to_bank`` (``llama-1b-random``): batched gradients appended to a :class:`bank_writer.BankWriter` (shard writes);
- ``bank_bytes``: stored bytes per passage of each storage scheme for the model's layout;
- ``bank_bytes_1b`` / ``bank_read_1b``: per scheme (``--schemes``), banks of ``--bank-rows`` random rows of the
  Llama-3.2-1B preset's layout (3,932,160 values) written on ``--device`` (encode there, CRC-32s, shards), then
  ``sum_many`` of 32 questions × 3 scattered entries onto ``--device``, cold (files evicted from the page cache,
  bank reopened) and page-cached, the schemes interleaved ``--read-repeat`` times (min and median).

Models: ``tiny`` and ``smollm2-135m-instruct`` (the presets of the same names; passages from the bundled
mini-Wikipedia) on the CPU; ``llama-1b-random``: a randomly initialised Llama of Llama-3.2-1B-Instruct's shape
(the dimensions of ../shared/bench/ref_bench.py) with the public 1B LoRA preset, bf16 base weights and bf16
autocast on a GPU (our dtype policy), random 150-token passages, LoRA B ~ N(0, 0.01) as ref_bench does.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.encode_bench                      # CPU: tiny + smollm2
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.encode_bench --only-banks         # CPU: 1B-layout banks only
    .venv/bin/python -m bench.encode_bench --device cuda --model llama-1b-random  # GPU; then, same session:
    python ../shared/bench/ref_bench.py --device cuda --only encode               # reference passages/s
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
from regrad_lib.bank import on_disk, reader, schemes
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import lora, regrad
from regrad_lib.io import artifacts, paths


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} thread(s))"


# --- models ------------------------------------------------------------------------------------------

def preset_learner(name: str, seq_len: int, device: str):
    """A learner of preset ``name`` with non-zero B, saved as run ``bench-<name>`` (bank_context_len = seq_len)."""
    from regrad_lib.core.learner import Learner

    preset = config.load_preset(name, {"learner": {"bank_context_len": seq_len}})
    learner = Learner.create(preset, device)
    with torch.no_grad():
        for n, p in learner.phi.items():
            if n.endswith("lora_B"):
                p.normal_(0, 0.01)
    run = f"bench-{name}"
    folder = paths.output_dir(run)
    preset.save(folder)
    learner.save(folder / paths.META_STATE)
    return run, learner


def random_1b(device: str):
    """A random Llama-3.2-1B-shaped model with the 1B LoRA preset, as a Learner (bf16 base on a GPU), B != 0."""
    learner = testing.random_1b_learner(device)
    with torch.no_grad():
        for n, p in learner.phi.items():
            if n.endswith("lora_B"):
                p.normal_(0, 0.01)
    return learner


# --- passages -----------------------------------------------------------------------------------------

def sample_records(tokenizer, n: int, seq_len: int) -> list[dict]:
    """Augmented-style records (3 passages each) of sample passages at least ``seq_len`` tokens long."""
    from regrad_lib.data import corpus, prompts

    chosen, need = [], -(-n // 3) * 3
    for p in corpus.read(paths.sample_corpus()):
        if len(tokenizer(prompts.format_passage(p.title, p.text))["input_ids"]) >= seq_len:
            chosen.append(p)
        if len(chosen) == need:
            break
    return [{"test_id": i, "question": "q?", "answers": ["a"], "passages": [p.text for p in chosen[i:i + 3]],
             "passage_ids": [p.id for p in chosen[i:i + 3]], "titles": [p.title for p in chosen[i:i + 3]],
             "scores": [1.0] * 3} for i in range(0, n, 3)]


def token_batches(learner, records, seq_len, batch: int, n: int):
    """Passage TokenBatches of ``batch`` rows (``n`` passages in all), tokenised and cut like encode does."""
    from regrad_lib.core import task_batches

    if records is None:  # random model: random ids, like ref_bench's DataGen
        g = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, 128000, (n, seq_len), generator=g)
        ids[:, 0] = 128000
        return [regrad.TokenBatch(ids[i:i + batch], torch.ones_like(ids[i:i + batch]), ids[i:i + batch].clone())
                for i in range(0, n, batch)]
    items = [(t, x) for r in records for t, x in zip(r["titles"], r["passages"])][:n]
    return [task_batches.passage_batch(learner.tokenizer, items[i:i + batch], seq_len) for i in range(0, n, batch)]


def gradients_to_cpu(learner, batch) -> torch.Tensor:
    """What encode does per batch: per-passage gradients, flatten, bf16, to the CPU."""
    with learner.autocast():
        grads, _ = regrad.per_passage_gradients(learner.model, learner.phi, batch.to(learner.device))
    return lora.flatten(grads).to(torch.bfloat16).cpu()


def time_batches(learner, batches, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` passes over ``batches`` (after one warm-up batch)."""
    gradients_to_cpu(learner, batches[0])
    best = float("inf")
    for _ in range(repeat):
        sync(learner.device)
        start = time.perf_counter()
        for b in batches:
            gradients_to_cpu(learner, b)
        sync(learner.device)
        best = min(best, time.perf_counter() - start)
    return best


def time_to_bank(learner, batches, writer) -> float:
    """Wall time of batched gradients appended to a bank writer, shard writes included."""
    gradients_to_cpu(learner, batches[0])
    sync(learner.device)
    start = time.perf_counter()
    for i, b in enumerate(batches):
        with learner.autocast():
            grads, _ = regrad.per_passage_gradients(learner.model, learner.phi, b.to(learner.device))
        writer.append([f"p{i}-{j}" for j in range(len(b))], lora.flatten(grads))
    writer.close()
    sync(learner.device)
    return time.perf_counter() - start


# --- measurements ---------------------------------------------------------------------------------------

def bench_model(name: str, args, device: torch.device, work: Path) -> None:
    common = {"model": name, "device": device_name(device), "seq_len": args.seq_len, "torch": torch.__version__}
    if name == "llama-1b-random":
        learner, run, records = random_1b(str(device)), None, None
        n = args.passages or 256
    else:
        run, learner = preset_learner(name, args.seq_len, str(device))
        n = args.passages or (96 if name == "tiny" else 24)
        records = sample_records(learner.tokenizer, n, args.seq_len)
        artifacts.write_json(paths.augmented_file("bench", "dev"), records)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    numel = lora.numel(learner.phi)
    n_one = min(n, args.one_by_one or (32 if device.type == "cuda" else n))
    dt = time_batches(learner, token_batches(learner, records, args.seq_len, 1, n_one), args.repeat)
    one = n_one / dt
    emit(name="one_by_one", unit="passages/s", value=round(one, 2), n=n_one, batch=1,
         ms_per_passage=round(1000 * dt / n_one, 2), **common)
    for b in args.batch:
        dt = time_batches(learner, token_batches(learner, records, args.seq_len, b, n), args.repeat)
        emit(name="batched", unit="passages/s", value=round(n / dt, 2), n=n, batch=b, speedup=round(n / dt / one, 2),
             ms_per_passage=round(1000 * dt / n, 2), **common)
    b = max(args.batch)
    if records is not None:
        from regrad_lib.bank import encode
        start = time.perf_counter()
        path = encode.encode(run, "bench", "dev", topk=3, batch_size=b, scheme="bf16", learner=learner, overwrite=True)
        dt = time.perf_counter() - start
        entries = len(reader.GradientBank.open(path))
        emit(name="encode", unit="passages/s", value=round(entries / dt, 2), n=entries, batch=b,
             speedup=round(entries / dt / one, 2), note="encode.encode end to end incl. tokenising and writes",
             **common)
    else:
        head = on_disk.header(model=name, model_id=name, model_revision=None, preset=testing.PRESET_1B, phi=learner.phi,
                            meta_hash="random", scheme="bf16")
        writer = BankWriter.open(work / "bank-1b", head, overwrite=True)
        dt = time_to_bank(learner, token_batches(learner, records, args.seq_len, b, n), writer)
        emit(name="to_bank", unit="passages/s", value=round(n / dt, 2), n=n, batch=b, speedup=round(n / dt / one, 2),
             note="gradients + bf16 + copy to CPU + shard writes", **common)
    if device.type == "cuda":
        emit(name="peak_gpu_memory", unit="GiB", value=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2),
             **common)
    layout = lora.layout(learner.phi)
    emit(name="bank_bytes", unit="bytes/passage", numel=numel, **{
        name: schemes.parse(name).row_bytes(layout) + 8 for name in ("fp32", "bf16", "int8", "int4", "int2")}, **common)


def bench_schemes_1b(work: Path, rows: int, repeat: int, device: torch.device, schemes_: list[str]) -> None:
    """Per scheme, for the 1B layout: bytes per passage (layout and on disk), write speed, and ``sum_many`` of
    32 questions x 3 entries, page-cached and cold, the schemes interleaved ``repeat`` times (min and median)."""
    import statistics

    layout = _layout_1b()
    phi = lora.unflatten(torch.zeros(sum(a * b for _, (a, b) in layout)), layout)
    numel = lora.numel(phi)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(8, rows - i), numel, generator=g) * 1e-3 for i in range(0, rows, 8)]
    folders = {}
    for name in schemes_:
        head = on_disk.header(model="llama-1b-random", model_id="llama-1b-random", model_revision=None,
                            preset=testing.PRESET_1B, phi=phi, meta_hash="random", scheme=name)
        folder = folders[name] = work / f"bank-1b-{name}"
        writer = BankWriter.open(folder, head, overwrite=True)
        start = time.perf_counter()
        for i, vectors in enumerate(batches):
            writer.append([f"p{i}-{j}" for j in range(len(vectors))], vectors.to(device))
        writer.close()
        write_s = time.perf_counter() - start
        b = reader.GradientBank.open(folder)
        emit(name="bank_bytes_1b", unit="bytes/passage", value=b.bytes_per_passage, scheme=name,
             on_disk=round(b.bytes_on_disk() / len(b)), numel=numel, entries=len(b),
             vs_fp32=round(4 * numel / b.bytes_per_passage, 2),
             write_MB_per_s=round(b.bytes_on_disk() / write_s / 1e6, 1),
             note=f"write: fp32 rows on {device} -> checks, encode, CRC-32s, shards, sha256, manifest")
    ids = [f"p{i}-{j}" for i, v in enumerate(batches) for j in range(len(v))]
    groups = [[ids[(3 * q + k) * 7 % rows] for k in range(3)] for q in range(32)]   # scattered rows, like retrieval
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):                  # interleaved: a burst of load elsewhere hits every scheme alike
        for name, folder in folders.items():
            import gc
            gc.collect()
            for file in folder.iterdir():     # cold: evicted from the page cache, bank reopened
                fd = os.open(file, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            with reader.GradientBank.open(folder) as b:
                for state in ("cold", "cached"):
                    sync(device)
                    wall, cpu = time.perf_counter(), time.process_time()
                    b.sum_many(groups, device)
                    sync(device)
                    times.setdefault((name, state, "wall"), []).append(time.perf_counter() - wall)
                    times.setdefault((name, state, "cpu"), []).append(time.process_time() - cpu)
    for (name, state, clock), values in times.items():
        emit(name="bank_read_1b", unit="ms", scheme=name, state=state, clock=clock, min=round(1000 * min(values), 1),
             median=round(1000 * statistics.median(values), 1), repeat=repeat, device=device_name(device),
             op="sum_many of 32 questions x 3 entries (read, CRC-32, decode on the device, fp32 sums)",
             note="clock=cpu: this process's CPU time (robust on a shared machine; excludes waiting for the disk)")


def _layout_1b():
    return lora.layout(testing.random_1b_learner("meta").phi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", action="append", choices=["tiny", "smollm2-135m-instruct", "llama-1b-random"],
                    help="repeatable; default: tiny and smollm2-135m-instruct on cpu, llama-1b-random on cuda")
    ap.add_argument("--seq-len", type=int, default=150, help="passage length in tokens")
    ap.add_argument("--passages", type=int, default=0, help="timed passages (default: 96 tiny, 32 smollm2, 256 1b)")
    ap.add_argument("--one-by-one", type=int, default=0, help="passages timed one at a time (default: all; 32 on cuda)")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (repeatable; default 8 and 16, "
                                                                "cuda: 16, 32, 64)")
    ap.add_argument("--bank-rows", type=int, default=96, help="rows of the 1B-layout banks (one per scheme)")
    ap.add_argument("--schemes", default="fp32,bf16,int8,int4,int2", help="schemes of the 1B-layout banks")
    ap.add_argument("--read-repeat", type=int, default=7, help="interleaved sum_many passes per scheme")
    ap.add_argument("--only-banks", action="store_true", help="skip the models: only the 1B-layout bank lines")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per measurement; the best is reported")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    models = args.model or (["llama-1b-random"] if device.type == "cuda" else ["tiny", "smollm2-135m-instruct"])
    args.batch = args.batch or ([16, 32, 64] if device.type == "cuda" else [8, 16])

    models_dir = paths.models_dir()   # the converted models stay where they are; every artifact goes to a temp root
    with tempfile.TemporaryDirectory(prefix="encode-bench-") as tmp:
        os.environ["REGRAD_WORK"] = tmp
        (Path(tmp) / "models").symlink_to(models_dir)
        for name in [] if args.only_banks else models:
            bench_model(name, args, device, Path(tmp))
        bench_schemes_1b(Path(tmp), args.bank_rows, args.read_repeat, device, args.schemes.split(","))


if __name__ == "__main__":
    main()
