"""One writer per run: the run lock of regrad_lib.io.runlock, and the fault test of two trainings
of one run name at once (two child processes): one is refused naming the other, the survivor's run is intact
and bit for bit a single training's."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from regrad_lib import config
from regrad_lib.io import artifacts, distributed, paths, run_state, runlock
from regrad_lib.training import train

TESTS = Path(__file__).parent
DATASET = "lockqa"
OVERRIDES = {"train": {"max_steps": 6, "save_steps": 3, "eval_steps": 3, "meta_batch_size": 2,
                       "tasks_per_forward": 2, "validation_size": 2, "warmup_ratio": 0.0,
                       "metric_for_best_model": "loss"}}

# A child that takes the lock of a run and holds it until its stdin closes (or is killed).
HOLDER = """
import sys
from regrad_lib.io import runlock
runlock.acquire(sys.argv[1], "a test holder")
print("held", flush=True)
sys.stdin.read()
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(paths.repo_root())}


def _holder(run: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, run], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=_env(), text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder():
    proc = _holder("busy")
    try:
        with pytest.raises(runlock.RunBusyError, match=rf"run 'busy' is being written by a test holder \(pid "
                                                       rf"{proc.pid} on host {socket.gethostname()}, since .*\): "
                                                       r"one run takes one writer at a time.*Lock: "
                                                       r"outputs/.locks/busy.lock"):
            runlock.acquire("busy", "03_train")
        runlock.acquire("other-run", "03_train")        # another run is another lock
        runlock.release("other-run")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    runlock.acquire("busy", "03_train")                 # released: free again
    runlock.release("busy")
    assert paths.run_lock_file("busy").read_text() == ""   # a writer that ends leaves an empty file


def test_a_lock_left_by_a_killed_process_is_taken_over(caplog):
    proc = _holder("stale")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads(paths.run_lock_file("stale").read_text())["pid"] == proc.pid   # the file names the dead holder
    with caplog.at_level("WARNING"):
        with runlock.hold("stale", "03_train"):
            assert json.loads(paths.run_lock_file("stale").read_text())["pid"] == os.getpid()
    assert f"took over the lock left by a test holder (pid {proc.pid}" in caplog.text


def test_the_lock_is_reentrant_within_a_process():
    with runlock.hold("nested", "03_train"):
        with runlock.hold("nested", "adapter export"):      # training exports its adapter under its own lock
            pass
        assert json.loads(paths.run_lock_file("nested").read_text())["step"] == "03_train"
        probe = subprocess.run([sys.executable, "-c", HOLDER, "nested"], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, env=_env(), timeout=120)
        assert probe.returncode != 0 and "RunBusyError" in probe.stderr   # still held after the inner block
    assert paths.run_lock_file("nested").read_text() == ""


def test_in_a_job_rank_zero_alone_holds_the_lock(monkeypatch):
    monkeypatch.setattr(distributed, "_job", distributed.Job(rank=1, size=2))
    with runlock.hold("ranked", "03_train"):
        assert not paths.run_lock_file("ranked").exists()
    monkeypatch.setattr(distributed, "_job", distributed.Job(rank=0, size=2))
    with runlock.hold("ranked", "03_train"):
        assert json.loads(paths.run_lock_file("ranked").read_text())["pid"] == os.getpid()


def test_without_flock_the_recorded_pid_decides(monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    file = paths.run_lock_file("nfs")
    file.parent.mkdir(parents=True, exist_ok=True)
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        file.write_text(json.dumps({"step": "04_encode", "pid": alive.pid, "host": socket.gethostname()}))
        with pytest.raises(runlock.RunBusyError, match=rf"04_encode \(pid {alive.pid}"):
            runlock.acquire("nfs", "03_train")
        file.write_text(json.dumps({"step": "04_encode", "pid": alive.pid, "host": "another-host"}))
        with pytest.raises(runlock.RunBusyError, match="on host another-host"):
            runlock.acquire("nfs", "03_train")
    finally:
        alive.stdin.close()
        alive.wait(timeout=60)
    file.write_text(json.dumps({"step": "04_encode", "pid": alive.pid, "host": socket.gethostname()}))  # now dead
    with runlock.hold("nfs", "03_train"):
        assert json.loads(file.read_text())["pid"] == os.getpid()


# --- two trainings of one run name at once ------------------------------------------------------------------

# A training child (tests/fault_child.py's stage) that, once it holds the run's lock and has taken its first
# meta step, waits for a file before going on: the other child is started only then, so it must meet the lock.
TRAINER = """
import json, os, sys, time
import fault_child
from regrad_lib.training import train
spec, gate = json.loads(sys.argv[1]), sys.argv[3]
real = train.meta_step
def paused(*args, **kwargs):
    out = real(*args, **kwargs)
    if gate:
        open(gate + ".reached", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.05)
    return out
train.meta_step = paused
fault_child.run("train", spec["kwargs"], spec["threads"])
"""


def _trainer(run: str, seed: int, gate: str, log: Path) -> subprocess.Popen:
    """A training child; its output goes to ``log`` (a pipe nobody reads could fill and stall it)."""
    overrides = {"train": {**OVERRIDES["train"], "seed": seed}}
    spec = {"kwargs": {"run": run, "preset": "tiny", "overrides": overrides, "train_datasets": [DATASET]},
            "threads": torch.get_num_threads()}
    with log.open("w") as out:
        env = {**_env(), "PYTHONPATH": os.pathsep.join([str(paths.repo_root()), str(TESTS)])}   # and fault_child
        return subprocess.Popen([sys.executable, "-c", TRAINER, json.dumps(spec), str(TESTS), gate], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout        # seconds alone; far more on a machine shared with other jobs
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first training ended before its pause ({proc.returncode}):\n"
                                 f"{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, "the first training never reached its pause"
        time.sleep(0.1)


def _same_training(run: str, reference: str) -> None:
    got, want = paths.output_dir(run), paths.output_dir(reference)
    for name in (paths.META_STATE, "checkpoint/state.safetensors"):
        a, b = load_file(str(got / name)), load_file(str(want / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def rows(r):
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in run_state.read_training_log(r)]
    assert rows(run) == rows(reference)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())


# other settings (a second training with seed 2, as when two trainings once corrupted a run), and the same ones
@pytest.mark.parametrize("second_seed", [2, 1])
def test_two_trainings_of_one_run_name_at_once(tiny_model_dir, tmp_path, second_seed):
    """They corrupted the run: one died on a missing .checkpoint.old, the survivor held seed-2 weights with seed-1
    log rows (equal settings: both "finished", 66 log rows instead of 34)."""
    records = [{"test_id": i, "question": f"Which city is number {i}?", "answers": [c],
                "passages": [f"City {i} is {c}.", f"{c} is big.", f"See {c}."],
                "passage_ids": [str(3 * i), str(3 * i + 1), str(3 * i + 2)]}
               for i, c in enumerate(["Rome", "Oslo", "Lima", "Kyiv", "Riga", "Bern", "Doha", "Baku"])]
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"), records)
    run = f"twice-{second_seed}"
    gate, logs = tmp_path / "go", (tmp_path / "first.log", tmp_path / "second.log")
    first = _trainer(run, 1, str(gate), logs[0])
    try:
        _wait_for(Path(f"{gate}.reached"), first, logs[0])       # it holds the lock and has taken a step
        second = _trainer(run, second_seed, "", logs[1])
        assert second.wait(timeout=900) == 1, logs[1].read_text()[-3000:]
        err = logs[1].read_text()
        assert f"RunBusyError: run '{run}' is being written by 03_train (pid {first.pid} on host " in err
        gate.touch()
        assert first.wait(timeout=900) == 0, logs[0].read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    reference = f"single-{second_seed}"
    train.train(reference, config.load_preset("tiny", {"train": {**OVERRIDES["train"], "seed": 1}}), [DATASET])
    _same_training(run, reference)
    # 6 train rows and the validations after steps 0, 3 and 6
    assert len(run_state.read_training_log(run)) == len(run_state.read_training_log(reference)) == 6 + 3


@pytest.mark.parametrize("where", ["mkdir", "write"])
def test_a_full_disk_names_the_lock_file(monkeypatch, where):
    """A full disk at the start of 03/04/05 raised a bare `OSError: [Errno 28] No space left on device`."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "mkdir":
        monkeypatch.setattr(Path, "mkdir", full)
    else:
        real = open

        class Full:
            def __init__(self, *args, **kwargs):
                self.f = real(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(self.f, name)

            write = full
        monkeypatch.setattr(runlock, "open", Full, raising=False)
    with pytest.raises(OSError, match=r"No space left on device \(writing outputs/.locks/full-disk.lock\); free "
                                      r"space on that disk") as info:
        runlock.acquire("full-disk", "05_evaluate")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(paths.run_lock_file("full-disk"))
    monkeypatch.undo()
    runlock.acquire("full-disk", "05_evaluate")             # nothing held after the failure
    runlock.release("full-disk")
