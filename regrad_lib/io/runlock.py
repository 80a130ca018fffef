"""One writer per run: 03_train, 04_encode and 05_evaluate of one run name never write at the same time.

Two trainings of one name interleave their checkpoint swaps and log rows (the survivor then holds another
seed's log), an evaluation beside a training reads weights being replaced, two evaluations lose each other's
rows of ``summary.csv``. So each of these steps holds the run's advisory lock while it works:
``outputs/.locks/<run>.lock`` (:func:`paths.run_lock_file`), an exclusive ``fcntl.flock`` on a file that records
the holder (step, pid, host, start time). A second writer is refused at once, naming the holder.

- The kernel releases the lock when its holder dies, however it dies (SIGKILL included): the file a dead
  process left behind names a pid that no longer runs, and the next writer takes it over (logged). Where the
  filesystem has no ``flock`` (some network filesystems), the recorded pid decides instead: a live pid on this
  host, or any pid on another host, holds it; a dead one on this host is taken over. A writer that ends empties
  the file, so a file naming a holder is one left by a process that died.
- In a job of several processes rank 0 alone holds it (it alone writes, :mod:`regrad_lib.io.distributed`); when
  the run is busy rank 0 fails, and the launcher stops the other ranks with rank 0's error.
- Reentrant within a process: training exports its adapter under the lock it already holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from regrad_lib.io import artifacts, distributed, paths

log = logging.getLogger(__name__)

_held: dict[str, list] = {}        # lock file -> [open file, depth]


class RunBusyError(RuntimeError):
    """Another process is writing this run; the message names it."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = holder.get("since")
    return (f"{holder.get('step', 'a step')} (pid {holder.get('pid')} on host {holder.get('host')}"
            + (f", since {since}" if since else "") + ")")


def _pid_alive(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and artifacts.pid_alive(pid)


def _busy(run: str, path: Path, holder: dict) -> RunBusyError:
    return RunBusyError(f"run {run!r} is being written by {_describe(holder)}: one run takes one writer at a time "
                        f"(03_train, 04_encode, 05_evaluate). Wait for it to finish, or use another run name. "
                        f"Lock: {paths.relative(path)}")


def acquire(run: str, step: str) -> None:
    """Take the run's lock for ``step`` in this process (or count one more use of it); RunBusyError if taken."""
    path = paths.run_lock_file(run)
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        return
    with artifacts.naming(path):       # a full disk names the lock file
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+", encoding="utf-8")   # never truncated before the lock is ours: it names the holder
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(run, path, _holder(path)) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            _without_flock(run, path)
        previous = _holder(path)
        if previous:     # a holder that ends releases an empty file
            log.warning("run %r: took over the lock left by %s, which stopped without releasing it", run,
                        _describe(previous))
        with artifacts.naming(path):
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"run": run, "step": step, "pid": os.getpid(), "host": socket.gethostname(),
                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
            f.flush()
    except BaseException:
        f.close()
        raise
    _held[key] = [f, 1]


def _without_flock(run: str, path: Path) -> None:
    """No flock on this filesystem: the recorded holder decides (a live pid here, or another host, holds it)."""
    holder = _holder(path)
    if holder.get("pid") not in (None, os.getpid()) and (holder.get("host") != socket.gethostname()
                                                          or _pid_alive(holder.get("pid"))):
        raise _busy(run, path, holder)
    log.warning("%s: this filesystem has no file locks; the run's lock relies on the recorded pid alone",
                paths.relative(path))


def release(run: str) -> None:
    """Give back one use of the run's lock; the last closes the file (the kernel drops the flock)."""
    key = str(paths.run_lock_file(run))
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        with entry[0] as f:    # emptied while still ours: a file naming a holder was left by one that died
            f.seek(0)
            f.truncate()


@contextlib.contextmanager
def hold(run: str, step: str) -> Iterator[None]:
    """The run's lock around a block. In a job of several processes rank 0 alone takes it, without a collective
    (a writer nested in rank 0's own work, like training's adapter export, must not wait for the other ranks):
    a busy run stops rank 0, and the launcher then stops the others, naming rank 0's error."""
    main = distributed.job().main
    if main:
        acquire(run, step)
    try:
        yield
    finally:
        if main:
            release(run)


def writer(step: str, argument: str = "run") -> Callable[[Callable], Callable]:
    """Decorator: the function holds the lock of the run named by its ``argument`` while it runs."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            run = signature.bind(*args, **kwargs).arguments[argument]
            with hold(run, step):
                return fn(*args, **kwargs)
        return wrapper
    return decorate
