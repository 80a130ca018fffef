"""The launcher's guards (README, "Several processes"): each rank's threads, the accelerate settings refused
(FSDP, DeepSpeed, a mixed_precision other than 'no'), and the collective timeout that ends a rank stuck waiting
for a peer. The jobs run tests/collective_child.py (a process group, no model): a few seconds each."""

import re
import sys
import time
from pathlib import Path

import pytest
import torch

from regrad_lib.io import distributed, paths
from regrad_lib.runner import launch

CHILD = Path(__file__).with_name("collective_child.py")
BASE = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "machine_rank": 0, "num_processes": 2,
        "mixed_precision": "'no'", "use_cpu": "false", "rdzv_backend": "static", "same_network": "true",
        "main_training_function": "main"}


def _config(tmp_path, name: str, **changes) -> Path:
    lines = [f"{k}: {v}" for k, v in {**BASE, **changes}.items()]
    file = tmp_path / f"{name}.yaml"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


def _job(config: Path, *args: str, env: dict | None = None) -> str:
    """Run the child as a 2-process job under accelerate launch; the LaunchError's message (it must fail)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
           "--main_process_port", str(launch.free_port()), str(CHILD), *args]
    with pytest.raises(launch.LaunchError) as error:
        launch.execute(cmd, "probe", 2, {"PYTHONPATH": str(paths.repo_root()), **(env or {})})
    return str(error.value)


@pytest.mark.parametrize("distributed_type,extra,refusal", [
    ("FSDP", {"fsdp_config": "{fsdp_sharding_strategy: FULL_SHARD}"}, "FSDP is not supported"),
    ("DEEPSPEED", {"deepspeed_config": "{zero_stage: 2}"}, "DeepSpeed"),
    ("MULTI_GPU", {"mixed_precision": "bf16"}, "mixed_precision='bf16'; set it to 'no'"),
])
def test_unsupported_accelerate_configs_are_refused(tmp_path, distributed_type, extra, refusal):
    """Launched for real: FSDP and a mixed_precision are refused by every rank as it joins; DeepSpeed by
    accelerate itself where deepspeed is not installed, else by the rank (the unit test below)."""
    message = _job(_config(tmp_path, distributed_type.lower(), distributed_type=distributed_type, **extra))
    assert refusal in message


@pytest.mark.parametrize("key,value,refusal", [("ACCELERATE_USE_FSDP", "true", "FSDP is not supported"),
                                               ("ACCELERATE_USE_DEEPSPEED", "true", "DeepSpeed is not supported"),
                                               ("ACCELERATE_USE_MEGATRON_LM", "true", "Megatron-LM"),
                                               ("ACCELERATE_MIXED_PRECISION", "fp16", "mixed_precision='fp16'")])
def test_a_rank_refuses_what_the_launcher_sets(monkeypatch, key, value, refusal):
    """What accelerate launch exports for those configs: refused before any process group is joined."""
    monkeypatch.setattr(distributed, "_job", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=re.escape(refusal)):
        distributed.init("cpu")
    assert distributed._job is None and not torch.distributed.is_initialized()


def test_a_rank_stuck_in_a_collective_gives_up_after_the_timeout(capfd):
    """Rank 1 sleeps 300 s; rank 0 waits in a barrier for REGRAD_COLLECTIVE_TIMEOUT_S = 3 s, then fails, and the
    launcher ends the job with its error. Without the timeout the barrier would return after rank 1's 300 s and
    the job would succeed (the test then fails); the bound on the wall time is far from both."""
    started = time.monotonic()
    message = _job(paths.resolve(launch.LOCAL_CONFIG), "hang", env={distributed.TIMEOUT_ENV: "3"})
    assert time.monotonic() - started < 200
    assert "failed on rank 0 of 2" in message and "Timed out" in message and "barrier" in message
    threads = [int(t) for t in re.findall(r"rank \d threads=(\d+)", capfd.readouterr().out)]
    assert threads == [int(launch.rank_threads(2).get("OMP_NUM_THREADS", torch.get_num_threads()))] * 2


def test_ranks_share_this_process_threads_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert launch.rank_threads(2) == {"OMP_NUM_THREADS": "2"}
        assert launch.rank_threads(3) == {"OMP_NUM_THREADS": "1"}
        assert launch.rank_threads(8) == {"OMP_NUM_THREADS": "1"}      # at least one each
        assert launch.rank_threads(1) == {"OMP_NUM_THREADS": "4"}
    finally:
        torch.set_num_threads(threads)
    assert launch.rank_threads(2, {"OMP_NUM_THREADS": "3"}) == {}        # the user's choice stands
    two_machines = _config(tmp_path, "two", num_processes=8, num_machines=2)
    assert launch.local_processes(1, str(two_machines)) == 4 and launch.local_processes(2, str(two_machines)) == 2
    assert launch.local_processes(3, None) == 3
