"""An offline tiny chat model for tests: a randomly initialised Llama and a small BPE tokenizer.

Both are built deterministically from the bundled sample corpus, so tests need no download. The tokenizer
carries a ChatML chat template (the same shape as SmolLM2's), so prompts go through the real template path.
"""

from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

from . import artifacts, paths

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny-llama"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text(limit: int = 3000):
    with paths.sample_corpus().open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for row in itertools.islice(rows, limit):
            if len(row) == 3:
                yield f"{row[2]}: {row[1]}"
    yield "Answer the question with a short answer.\nQuestion: What is the capital of France?\nAnswer: Paris\n"


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the sample corpus, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden_size: int = 64, num_layers: int = 4):
    """A randomly initialised Llama small enough for unit tests (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


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

    from . import config, lora
    from .learner import Learner, model_dtype
    from .regrad import StepSizes

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


def ensure_tiny_model(folder: Path | None = None) -> Path:
    """Build ``models/tiny-llama`` once (about a second) and return its folder."""
    folder = folder or paths.model_dir(TINY_MODEL_NAME)
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    log.info("building the offline tiny test model in %s", folder)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer))
    with artifacts.atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def saved_trained_run(run: str, preset, seed: int = 0, b_std: float = 0.3, alpha: float = 0.5):
    """A 'trained' learner for tests, saved as 03_train saves one (``outputs/<run>/``): a fresh learner of
    ``preset`` with random non-zero ``lora_B`` (so the LoRA and its gradients act) and every step size ``alpha``."""
    import torch

    from .learner import META_STATE, TRAIN_SUMMARY, Learner

    learner = Learner.create(preset)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, b_std)
        for v in learner.alpha.values.values():
            v.fill_(alpha)
    preset.save(paths.output_dir(run))
    learner.save(paths.output_dir(run) / META_STATE)
    artifacts.write_json(paths.output_dir(run) / TRAIN_SUMMARY, {"run": run})   # finished, as 03_train marks it
    return learner


CHAIN_DATASETS = ("popqa", "probe")


def run_tiny_chain(run: str, seed: int = 42, limit: int = 8, steps: int = 3, index: str = "chain",
                   gammas: tuple[float, ...] = (0.0, 0.5, 1.0)) -> None:
    """The demo's chain on the tiny model, through the notebooks' library calls: a BM25 index of the bundled
    corpus with the probe's passages (01), ``limit`` dev and 16 training questions of popqa and the probe (02),
    ``steps`` meta-training steps with ``seed`` (03), an int4 bank (04), the five demo methods and a gamma
    sweep on the probe (05). Index and augmented files are reused when present (as ``--seeds`` does)."""
    from . import augment, encode, evaluate, launch, probe, retrieval, train

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
