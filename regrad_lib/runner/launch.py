"""Run a heavy step (``train``, ``encode``, ``evaluate``) in this process or as a job of several processes.

Notebooks 03/04/05 and the runner call :func:`run` with the step's settings (:class:`train.TrainSettings`,
:class:`encode.EncodeSettings`, :class:`evaluate.EvaluateSettings`) and ``num_processes``. With one process and
no accelerate config (the default) the step runs right here, exactly as it always has. Otherwise it runs under
``accelerate launch`` as a child process: its output streams into the notebook, and a failure is raised as a
:class:`LaunchError` naming the failing rank with its traceback (the launcher stops the other ranks at once).

The child's entry point is also the command line a user launches directly (README, "Several processes")::

    python -m regrad_lib.runner.launch train --run myrun --preset tiny --train-datasets popqa,hotpotqa
    accelerate launch --config_file configs/accelerate/llama-8b-4gpu.yaml -m regrad_lib.runner.launch train ...

Every settings field is a ``--flag`` (``--train-datasets``, ``--max-steps``, ...): lists as ``a,b`` or JSON,
``null`` for None.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regrad_lib.io import artifacts, distributed, params, paths

__all__ = ["LOCAL_CONFIG", "LaunchError", "command", "execute", "failure", "free_port", "local_processes", "parse_args",
           "rank_threads", "run", "to_argv"]

log = logging.getLogger(__name__)

CONFIGS = Path("configs") / "accelerate"
LOCAL_CONFIG = CONFIGS / "local.yaml"          # N processes on this machine (gloo on CPU, one per GPU)
STOP_GRACE_S = 60                              # after an interrupt: time for rank 0 to save its checkpoint


class LaunchError(RuntimeError):
    """A step launched as several processes failed; the message names the rank and carries its traceback."""


@dataclass(frozen=True)
class Step:
    settings: type
    compute: Callable[[Any], Any]                           # what every process runs
    result: Callable[[Any], Any] = lambda value: value      # the result file's JSON -> what compute returns


def steps() -> dict[str, Step]:
    from regrad_lib.bank import encode
    from regrad_lib.evaluation import evaluate
    from regrad_lib.training import train

    return {"train": Step(train.TrainSettings, train.run),
            "encode": Step(encode.EncodeSettings, encode.encode_all,
                           lambda banks: {dataset: {scheme: Path(folder) for scheme, folder in by_scheme.items()}
                                          for dataset, by_scheme in banks.items()}),
            "evaluate": Step(evaluate.EvaluateSettings, evaluate.run)}


def step_name(settings: Any) -> str:
    for name, step in steps().items():
        if isinstance(settings, step.settings):
            return name
    raise TypeError(f"{type(settings).__name__} is not the settings of a step; expected one of "
                    f"{[s.settings.__name__ for s in steps().values()]}")


# --- settings <-> command line --------------------------------------------------------------------------------

def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def to_argv(settings: Any) -> list[str]:
    """Every settings field as ``--name value`` (strings as they are, anything else as JSON)."""
    out = []
    for f in _fields(type(settings)):
        value = getattr(settings, f.name)
        out += [f"--{f.name.replace('_', '-')}", value if isinstance(value, str) else json.dumps(value)]
    return out


def _parser_for(hint: Any, flag: str) -> Callable[[str], Any]:
    """A command-line value by its field's type (:mod:`regrad_lib.io.params`): str kept as is, None from null/None,
    booleans from true/false, numbers from their text, lists from JSON or a,b; anything else refused, naming the
    flag and the value."""
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if typing.get_origin(hint) in (typing.Union, types.UnionType) \
        else [hint]
    kind = inner[0] if len(inner) == 1 else None

    def parse(text: str) -> Any:
        if optional and text in ("null", "None"):
            return None
        if kind is str:
            return text
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text          # a,b lists, True/False, plain words: the type decides below
        try:
            return params.coerce(flag, value, hint)
        except params.ParameterError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def parse_args(argv: list[str]) -> tuple[str, Any, Path | None]:
    """(step, its settings, the result file) from ``<step> --field value ... [--result FILE]``."""
    table = steps()
    top = argparse.ArgumentParser(prog="python -m regrad_lib.runner.launch", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="step", required=True)
    for name, step in table.items():
        parser = sub.add_parser(name, help=f"{step.settings.__name__}: see its docstring")
        hints = typing.get_type_hints(step.settings)
        for f in _fields(step.settings):
            flag = f"--{f.name.replace('_', '-')}"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            parser.add_argument(flag, dest=f.name, type=_parser_for(hints[f.name], flag), required=required,
                                default=argparse.SUPPRESS)
        parser.add_argument("--result", type=Path, default=None, help="rank 0 writes the step's result here (JSON)")
    ns = vars(top.parse_args(argv))
    name, result = ns.pop("step"), ns.pop("result")
    return name, table[name].settings(**ns), result


# --- the child: one process of the job ----------------------------------------------------------------------

def _record(fn):
    """torchrun's error recorder: the failing rank's traceback reaches the launcher's failure summary."""
    from torch.distributed.elastic.multiprocessing.errors import record
    return record(fn)


@_record
def main(argv: list[str] | None = None) -> int:
    name, settings, result = parse_args(sys.argv[1:] if argv is None else argv)
    job = distributed.init(getattr(settings, "device", "cpu"))
    where = f"[rank {job.rank}/{job.size}] " if job.size > 1 else ""
    logging.basicConfig(level=logging.INFO if job.main else logging.WARNING,
                        format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    log.info("%s: %d process(es), %d torch thread(s) each", name, job.size, torch.get_num_threads())
    if not job.main:   # one set of progress bars: rank 0's
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
    try:
        value = steps()[name].compute(settings)
        if result is not None and job.main:
            artifacts.write_text(result, json.dumps(value, default=str))   # bank folders (Path) as str
    finally:
        distributed.finish()
    return 0


# --- the parent: a notebook or the runner ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, settings: Any, num_processes: int, accelerate_config: str | None,
            result: Path | None = None) -> list[str]:
    """The ``accelerate launch`` command line of a step (the default config: N processes on this machine)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is None:
        cmd += ["--config_file", str(paths.resolve(LOCAL_CONFIG)), "--num_processes", str(num_processes),
                "--main_process_port", str(free_port())]
    else:
        cmd += ["--config_file", str(paths.resolve(accelerate_config))]
        if num_processes > 1:
            cmd += ["--num_processes", str(num_processes)]
    cmd += ["-m", "regrad_lib.runner.launch", name, *to_argv(settings)]
    return cmd + (["--result", str(result)] if result is not None else [])


def run(settings: Any, num_processes: int = 1, accelerate_config: str | None = None) -> Any:
    """Run the step of ``settings``: here with one process, else as a job under ``accelerate launch``.

    ``accelerate_config``: an accelerate config file (e.g. ``configs/accelerate/llama-8b-4gpu.yaml``; its own
    process count unless ``num_processes`` > 1 overrides it). Returns what the step returns in one process.
    """
    name = step_name(settings)
    num_processes = params.integer("num_processes", num_processes, minimum=1)
    if accelerate_config is not None and not paths.resolve(accelerate_config).is_file():
        raise FileNotFoundError(f"accelerate_config={accelerate_config!r}: no such file (the shipped ones are in "
                                f"{CONFIGS}/)")
    if num_processes == 1 and accelerate_config is None:
        return steps()[name].compute(settings)
    if distributed.launched():
        raise RuntimeError(f"already one process of a job of {os.environ.get('WORLD_SIZE')}: call the step itself "
                           "(num_processes=1) instead of launching another job from inside it")
    with tempfile.TemporaryDirectory(prefix="regrad-launch-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = command(name, settings, num_processes, accelerate_config, result)
        log.info("launching %s: %s", name, shlex.join(cmd))
        execute(cmd, name, num_processes, rank_threads(local_processes(num_processes, accelerate_config)))
        return steps()[name].result(json.loads(result.read_text(encoding="utf-8")))


def local_processes(num_processes: int, accelerate_config: str | None) -> int:
    """How many ranks of the job run on this machine: ``num_processes``, or with an accelerate config of one's
    own (and ``num_processes`` 1) its ``num_processes`` / ``num_machines``."""
    if accelerate_config is None or num_processes > 1:
        return num_processes
    import yaml

    cfg = yaml.safe_load(paths.resolve(accelerate_config).read_text(encoding="utf-8")) or {}
    return max(1, int(cfg.get("num_processes") or 1) // max(1, int(cfg.get("num_machines") or 1)))


def rank_threads(local: int, environ: dict | None = None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for the ranks: unless it is set already, this process's torch thread count shared
    among the ``local`` ranks of this machine (at least 1 each), so a job uses the cores one process would
    (torchrun alone would give each rank 1 thread). The results equal one process's within float rounding
    whatever the split (tests/test_distributed.py)."""
    if "OMP_NUM_THREADS" in (os.environ if environ is None else environ):
        return {}
    import torch

    return {"OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // max(1, local)))}


def execute(cmd: list[str], name: str, num_processes: int, extra_env: dict[str, str] | None = None) -> None:
    """Run a launcher command, streaming its output; a non-zero exit raises :class:`LaunchError`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=paths.repo_root(), env=env,
                            start_new_session=True)   # a terminal's Ctrl-C reaches this process only: see _stop
    tail = ""   # the last MB of output: the failing rank's traceback and the launcher's summary
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            text = chunk.decode("utf-8", errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-(1 << 20):]
        code = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    if code != 0:
        raise LaunchError(failure(tail, name, num_processes, code))
    log.info("%s: %d processes done in %.0f s", name, num_processes, time.perf_counter() - started)


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt every rank (each raises KeyboardInterrupt: rank 0 saves a training checkpoint, atomically), then
    kill whatever is left after ``STOP_GRACE_S``. The ranks are signalled themselves: torchrun starts each in a
    session of its own, and would only SIGTERM them."""
    import psutil

    try:
        ranks = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        ranks = []
    for rank in ranks:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        for p in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.kill()
        proc.wait()


def failure(output: str, name: str, num_processes: int, code: int) -> str:
    """What failed, from the launcher's output: the failing rank (its 'Root Cause'), its error and traceback."""
    cause = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", output, re.S)
    prefixed = re.findall(r"^\[rank(\d+)\]:", output, re.M)
    rank = int(cause.group(1)) if cause else (int(prefixed[0]) if prefixed else None)
    if rank is None:
        tail = "\n".join(output.strip().splitlines()[-20:])
        return f"{name} failed (launcher exit code {code}) before any rank reported an error:\n{tail}"
    lines = [line[len(f"[rank{rank}]:"):].removeprefix(" ") for line in output.splitlines()
             if line.startswith(f"[rank{rank}]:")]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    trace = lines[starts[-1]:] if starts else lines[-30:]
    recorded = re.search(r"traceback\s*:\s*(Traceback.*?)\n=+", output[cause.end():], re.S) if cause else None
    if not trace and recorded:   # raised before the process group existed: the recorder's copy in the summary
        trace = [line.removeprefix("  ") for line in recorded.group(1).splitlines()]
    error = next((line.strip() for line in reversed(trace) if line.strip() and not line.startswith(" ")), "")
    of = f" of {num_processes}" if num_processes > 1 else ""
    return (f"{name} failed on rank {rank}{of} (exit code {code}): {error}\n"
            f"Traceback of rank {rank}:\n" + "\n".join(trace))


if __name__ == "__main__":
    sys.exit(main())
