"""Helpers for tests and benchmarks only (no library module imports this): a random Llama-3.2-1B-shaped learner
for the benchmarks and a saved "trained" run for tests. The tiny test model itself is :mod:`regrad_lib.core.tiny_model`.
"""

from __future__ import annotations

from regrad_lib.core.tiny_model import build_tokenizer, ensure_tiny_model
from regrad_lib.io import artifacts, paths

# meta-llama/Llama-3.2-1B-Instruct's dimensions (as in ../shared/bench/ref_bench.py): benchmarks build a random
# model of this shape, since no weights can be downloaded.
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
                  max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                  rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                  tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
PRESET_1B = "llama-3.2-1b-instruct"


def random_1b_learner(device: str = "cpu", seed: int = 42):
    """A randomly initialised Llama-3.2-1B-shaped model with the public 1B LoRA preset, as a Learner.

    Base weights follow the learner's dtype policy (bf16 on a GPU); the tokenizer is the tiny test one (the
    benchmarks feed token ids, not text the 1B vocabulary would need). ``device="meta"`` gives shapes only.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from regrad_lib import config
    from regrad_lib.core import lora
    from regrad_lib.core.learner import Learner, model_dtype
    from regrad_lib.core.regrad import StepSizes

    preset = config.load_preset(PRESET_1B)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA32_1B, attn_implementation="sdpa"))
        if device != "meta":
            model = model.to(model_dtype(preset, device))
        model.eval().requires_grad_(False)
        lora.attach(model, preset.peft, seed=preset.train.seed)
    phi = lora.parameters(model)
    alpha = StepSizes(phi, preset.learner.alpha_mode, preset.learner.init_alpha).to(device)
    tokenizer = None if device == "meta" else build_tokenizer()
    return Learner(model, tokenizer, preset, phi, alpha, torch.device(device))


def saved_trained_run(run: str, preset, seed: int = 0, b_std: float = 0.3, alpha: float = 0.5):
    """A 'trained' learner for tests, saved as 03_train saves one (``outputs/<run>/``): a fresh learner of
    ``preset`` with random non-zero ``lora_B`` (so the LoRA and its gradients act) and every step size ``alpha``."""
    import torch

    from regrad_lib.core.learner import Learner

    learner = Learner.create(preset)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, b_std)
        for v in learner.alpha.values.values():
            v.fill_(alpha)
    preset.save(paths.output_dir(run))
    learner.save(paths.meta_state_file(run))
    artifacts.write_json(paths.train_summary_file(run), {"run": run})   # finished, as 03_train marks it
    return learner


CHAIN_DATASETS = ("popqa", "probe")


def run_tiny_chain(run: str, seed: int = 42, limit: int = 8, steps: int = 3, index: str = "chain",
                   gammas: tuple[float, ...] = (0.0, 0.5, 1.0)) -> None:
    """The demo's chain on the tiny model, through the notebooks' library calls: a BM25 index of the bundled
    corpus with the probe's passages (01), ``limit`` dev and 16 training questions of popqa and the probe (02),
    ``steps`` meta-training steps with ``seed`` (03), an int4 bank (04), the five demo methods and a gamma
    sweep on the probe (05). Index and augmented files are reused when present (as ``--seeds`` does)."""
    from regrad_lib import retrieval
    from regrad_lib.bank import encode
    from regrad_lib.data import probe
    from regrad_lib.evaluation import evaluate
    from regrad_lib.retrieval import augment
    from regrad_lib.runner import launch
    from regrad_lib.training import train

    ensure_tiny_model()
    if not paths.index_dir(index).is_dir():
        retrieval.build(probe.combined_corpus("data/sample/psgs_w100.tsv"), index, threads=1)
    bm25 = retrieval.open(index)
    augment.augment_all(list(CHAIN_DATASETS), "dev", retriever=bm25, data_root="data/sample", topk=3, limit=limit)
    augment.augment_all(list(CHAIN_DATASETS), "train", retriever=bm25, data_root="data/sample", topk=3, limit=16)
    launch.run(train.TrainSettings(run=run, preset="tiny", train_datasets=list(CHAIN_DATASETS), train_limit=16,
                                   max_steps=steps, seed=seed))
    launch.run(encode.EncodeSettings(run=run, datasets=list(CHAIN_DATASETS)))
    launch.run(evaluate.EvaluateSettings(run=run, datasets=list(CHAIN_DATASETS), gammas=list(gammas),
                                         methods=["closed_book", "rag", "regrad", "shift", "no_update"],
                                         sweep_datasets=["probe"]))
