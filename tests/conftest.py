"""Shared test set-up: offline, deterministic, artifacts in a private work root (never the checkout's)."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["REGRAD_WORK"] = os.environ.get("REGRAD_TEST_WORK") or tempfile.mkdtemp(prefix="regrad-test-")

import pytest  # noqa: E402


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
