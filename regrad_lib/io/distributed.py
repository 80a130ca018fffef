"""The processes of one job: which one this is, its share of the work, and the few collectives the steps need.

A job of N processes is started by ``accelerate launch`` (or ``torchrun``), which sets ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``; :func:`init` then joins accelerate's process group (``PartialState``: gloo on CPU, nccl on
GPUs) with a collective timeout, so a rank stuck in a collective whose peer hangs fails instead of waiting
forever (a peer that *dies* is noticed at once: the launcher stops every rank). With one process and no
launcher nothing here touches torch.distributed: every helper is the identity and the steps run exactly the
code they ran before scale-out existed.

Conventions the steps follow: every rank runs the same control flow and reads the same inputs; work is split
deterministically (:func:`span`, :func:`turns`); results are gathered in input order; rank 0 alone writes
artifacts and decides anything that depends on files (:func:`on_main`), so ranks never race on the disk.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "REGRAD_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800          # torch's own default for gloo; a collective waits at most this long
# accelerate settings this project does not act on: refused rather than silently ignored.
UNSUPPORTED = {
    "ACCELERATE_USE_FSDP": "FSDP is not supported: the base model is replicated on every process "
                           "(see README, 'Several processes')",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed is not supported (the meta-gradients are reduced by regrad itself)",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM is not supported",
}


@dataclass(frozen=True)
class Job:
    """This process's place in the job."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


_job: Job | None = None


def launched() -> bool:
    """True inside a job started by a launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> Job:
    """Join the job's process group (once; nothing to do without a launcher) and return this process's place."""
    global _job
    if _job is not None:
        return _job
    if not launched():
        _job = Job()
        return _job
    for key, reason in UNSUPPORTED.items():
        if os.environ.get(key, "false").lower() == "true":
            raise ValueError(f"{key}=true (from the accelerate config): {reason}")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision != "no":
        raise ValueError(f"the accelerate config sets mixed_precision={precision!r}; set it to 'no': precision comes "
                         "from the preset (train_args.json mixed_precision), which regrad applies itself")
    from accelerate import PartialState

    seconds = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    state = PartialState(cpu=torch.device(device).type == "cpu", timeout=datetime.timedelta(seconds=seconds))
    _job = Job(state.process_index, state.num_processes, state.local_process_index)
    log.debug("rank %d of %d (local %d), backend %s", _job.rank, _job.size, _job.local_rank, state.backend)
    return _job


def job() -> Job:
    """This process's place (one process of one when no job was joined)."""
    return _job or Job()


def finish() -> None:
    """Leave the process group (end of a launched step)."""
    global _job
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _job = None


def local_device(device: str) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:<local rank>`` in a job; others are kept."""
    dev = torch.device(device)
    if job().size > 1 and dev.type == "cuda" and dev.index is None:
        return f"cuda:{job().local_rank}"
    return device


def collective_device() -> torch.device:
    """Where tensors for collectives live: the GPU of this process with nccl, the CPU with gloo."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- sharing the work --------------------------------------------------------------------------------------

def span(n: int, rank: int | None = None, size: int | None = None) -> range:
    """The contiguous, near-equal part of ``range(n)`` of a rank (the first ``n % size`` ranks get one more)."""
    rank = job().rank if rank is None else rank
    size = job().size if size is None else size
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def turns(n: int) -> range:
    """Items ``rank, rank + size, ...`` of ``range(n)`` (round robin: long and short batches spread evenly)."""
    return range(job().rank, n, job().size)


def merge_turns(mine: Sequence[T], n: int) -> list[T]:
    """The results of every rank's :func:`turns` of ``range(n)``, gathered back into input order."""
    if job().size == 1:
        return list(mine)
    parts = gather(list(mine))
    out: list[Any] = [None] * n
    for rank, part in enumerate(parts):
        out[rank::job().size] = part
    return out


# --- collectives (identity for one process) ------------------------------------------------------------------

def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if job().size == 1:
        return [value]
    out: list[Any] = [None] * job().size
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every rank."""
    if job().size == 1:
        return value
    box = [value if job().main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn`` run by rank 0 alone (file checks, writes); its result, or its exception, on every rank."""
    if job().size == 1:
        return fn(*args, **kwargs)
    outcome: tuple[bool, Any] = (True, None)
    if job().main:
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as e:  # re-raised below on every rank, so all stop with rank 0's error
            outcome = (False, e)
    ok, value = broadcast(outcome)
    if not ok:
        raise value
    return value


def barrier() -> None:
    if job().size > 1:
        torch.distributed.barrier()


def sum_(tensors: Sequence[torch.Tensor]) -> None:
    """All-reduce (sum) these tensors in place, in one flat buffer per dtype."""
    if job().size == 1 or not tensors:
        return
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        torch.distributed.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def sum_gradients(params: Sequence[torch.Tensor]) -> None:
    """All-reduce (sum) the ``.grad`` of ``params``; a rank that computed none contributes zeros. A parameter that
    no rank gave a gradient keeps none (as with one process), so the optimizer skips it: alpha in the
    ``outer_loss = false`` ablation is not decayed by AdamW."""
    if job().size == 1:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=collective_device())
    sum_([has])
    live = [p for p, n in zip(params, has.tolist()) if n > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    sum_([p.grad for p in live])


def same_everywhere(value: str, what: str) -> None:
    """Raise on every rank unless every rank holds the same ``value`` (e.g. a hash of the weights)."""
    values = gather(value)
    if len(set(values)) > 1:
        raise RuntimeError(f"the processes disagree on {what}: {values} (one value per rank); every rank must "
                           "run the same code on the same files")
