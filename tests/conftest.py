"""Shared test set-up: offline, deterministic, artifacts in a private work root (never the checkout's).

Tests must not depend on their order: each module writes under run and dataset names of its own (or a folder its
fixture owns). ``REGRAD_TEST_ORDER=reverse`` runs the collected tests last to first (pytest has no built-in
reverse), which shows a test that needed another's leftovers or broke on them:

    rm -rf /tmp/unit && REGRAD_TEST_WORK=/tmp/unit REGRAD_TEST_ORDER=reverse .venv/bin/python -m pytest -q tests
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["REGRAD_WORK"] = os.environ.get("REGRAD_TEST_WORK") or tempfile.mkdtemp(prefix="regrad-test-")

import pytest  # noqa: E402

ORDERS = ("forward", "reverse")


def pytest_collection_modifyitems(config, items):
    """``REGRAD_TEST_ORDER``: forward (the default, collection order) or reverse (last to first; each module's
    tests stay together, so module fixtures are still made once)."""
    order = os.environ.get("REGRAD_TEST_ORDER", "forward")
    if order not in ORDERS:
        raise pytest.UsageError(f"REGRAD_TEST_ORDER={order!r}: choose {' or '.join(ORDERS)}")
    if order == "reverse":
        items.reverse()


@pytest.fixture(scope="session")
def tiny_model_dir():
    from regrad_lib.core import tiny_model
    return tiny_model.ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) of the offline tiny Llama, fp32, LoRA not attached."""
    from regrad_lib.core import modeling
    return modeling.load(str(tiny_model_dir))


@pytest.fixture()
def crash_on_call(monkeypatch):
    """``crash_on_call(module, name, n)``: the n-th call of ``module.name`` raises RuntimeError("simulated crash");
    ``monkeypatch.undo()`` restores it."""
    def install(module, name: str, n: int) -> None:
        original, calls = getattr(module, name), {"n": 0}

        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("simulated crash")
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)
    return install
