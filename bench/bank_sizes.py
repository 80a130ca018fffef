"""Gradient Bank size per storage scheme, from the LoRA layouts (arithmetic; no gradients computed).

For the ``tiny``, ``smollm2-135m-instruct`` and ``llama-3.2-1b-instruct`` presets (models built on the meta
device from their configs: no weights are loaded), prints the stored bytes per passage of every scheme (values,
scales and the 8-byte row checksum; the manifest and shard headers add ~0.3 KB per passage, mostly the id) and
the bank size of the public protocol (≈ 3,600 distinct passages: 3 datasets × 300 questions × top-3, 28 GB in
bf16, 57 GB in the reference's fp32) and of 10^6 passages. One JSON line per layout, then a markdown table.

    .venv/bin/python -m bench.bank_sizes
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from regrad_lib import config, testing
from regrad_lib.bank import schemes
from regrad_lib.core import lora, modeling, tiny_model

SCHEMES = ["fp32", "bf16", "int8", "int4", "int4-g128", "int2"]
PRESETS = {"tiny": "tiny", "SmolLM2-135M (r=8, layers 15–29)": "smollm2-135m-instruct",
           "Llama-3.2-1B (r=16, layers 8–15)": testing.PRESET_1B}
BANKS = {"public protocol (3,600)": 3_600, "10^6 passages": 1_000_000}


def layout(preset_name: str):
    """The preset's LoRA layout, from a model built on the meta device (nothing is loaded or written)."""
    preset = config.load_preset(preset_name)
    if preset_name == testing.PRESET_1B:
        return lora.layout(testing.random_1b_learner("meta").phi)
    with torch.device("meta"):
        if preset.learner.model_name_or_path == tiny_model.TINY_MODEL_NAME:
            model = tiny_model.build_model(vocab_size=1024)          # the vocabulary does not touch the LoRA layout
        else:                                                     # an existing local model folder's config
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(
                modeling.LOCAL_MODELS[preset.learner.model_name_or_path]()))
        lora.attach(model, preset.peft)
    return lora.layout(lora.parameters(model))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return ""


def main() -> None:
    rows = []
    for label, preset in PRESETS.items():
        shapes = layout(preset)
        numel = sum(a * b for _, (a, b) in shapes)
        sizes = {s: schemes.parse(s).row_bytes(shapes) + 8 for s in SCHEMES}
        print(json.dumps({"layout": label, "numel": numel, "bytes_per_passage": sizes}), flush=True)
        rows.append((label, numel, sizes))
    head = "| layout | values | " + " | ".join(SCHEMES) + " |"
    print(head + "\n|" + "---|" * (len(SCHEMES) + 2))
    for label, numel, sizes in rows:
        print(f"| {label} | {numel:,} | " + " | ".join(f"{sizes[s]:,}" for s in SCHEMES) + " |")
    print("| ratio to fp32 (1B) | | " + " | ".join(f"{rows[-1][2]['fp32'] / rows[-1][2][s]:.2f}x" for s in SCHEMES)
          + " |")
    for bank, n in BANKS.items():
        print(f"| 1B bank, {bank} | | " + " | ".join(human(rows[-1][2][s] * n) for s in SCHEMES) + " |")


if __name__ == "__main__":
    main()
