"""The child process of tests/test_faults.py: run one pipeline stage and SIGKILL itself at a chosen point.

``python tests/fault_child.py '<json>'`` with ``{"stage": ..., "kwargs": {...}, "hook": {...} | null,
"threads": n}``. A hook wraps one function ``"module:attribute"`` and kills the process (SIGKILL: no clean-up,
no ``finally``) on its ``nth`` matching call, ``"before"`` or ``"after"`` the real call; ``"match"`` is a regex
that a path argument's file name must match for the call to count. ``{"nth_item": n}`` instead kills when the
n-th item of the iterator the function returns is about to be taken.
"""

import importlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(hook: dict) -> None:
    module_name, attribute = hook["target"].split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)
    pattern = re.compile(hook["match"]) if "match" in hook else None
    lock, seen = threading.Lock(), [0]

    def counts(args, kwargs) -> bool:
        if pattern is None:
            return True
        return any(isinstance(a, (str, os.PathLike)) and pattern.fullmatch(Path(a).name)
                   for a in (*args, *kwargs.values()))

    def items(iterator):
        for n, item in enumerate(iterator, 1):
            if n == hook["nth_item"]:
                die()
            yield item

    def wrapper(*args, **kwargs):
        if "nth_item" in hook:
            return items(original(*args, **kwargs))
        if not counts(args, kwargs):
            return original(*args, **kwargs)
        with lock:
            seen[0] += 1
            hit = seen[0] == hook["nth"]
        if hit and hook.get("when", "before") == "before":
            die()
        result = original(*args, **kwargs)
        if hit:
            die()
        return result

    setattr(module, attribute, wrapper)


def run(stage: str, kwargs: dict, threads: int):
    from regrad_lib import retrieval
    from regrad_lib.retrieval import augment

    if stage == "index":
        return retrieval.build(**kwargs)
    if stage == "augment":
        return augment.augment(retriever=retrieval.open(kwargs.pop("index")), **kwargs)
    import torch

    from regrad_lib import config
    from regrad_lib.bank import encode
    from regrad_lib.evaluation import evaluate
    from regrad_lib.training import train

    torch.set_num_threads(threads)   # the parent's: results are compared bit for bit
    if stage == "train":
        preset = config.load_preset(kwargs.pop("preset"), kwargs.pop("overrides"))
        return train.train(preset=preset, **kwargs)
    if stage == "encode":
        return encode.encode(**kwargs)
    if stage in ("cpt", "evaluate"):
        from regrad_lib.evaluation import evaluate
        return evaluate.evaluate(**kwargs)
    raise ValueError(f"unknown stage {stage!r}")


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    if spec.get("hook"):
        install(spec["hook"])
    run(spec["stage"], spec["kwargs"], spec["threads"])
