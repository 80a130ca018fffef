"""The offline tiny chat model of tests, CI and the ``tiny`` preset: a randomly initialised Llama and a small BPE
tokenizer, both built deterministically from the bundled sample corpus (no download). The tokenizer carries a
ChatML chat template (the same shape as SmolLM2's), so prompts go through the real template path.
"""

from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

from regrad_lib.io import artifacts, paths

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
