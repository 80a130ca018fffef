"""Prompts and passages as token ids: the chat template, one passage format, answer labels, answer extraction.

One function formats a passage (:func:`format_passage`) for the three places that use passages: the inner-step
LM loss in training, the Gradient Bank, and the in-context prompt. The public code formatted them differently
in training and banking (a train/test mismatch, method.md "Known flaws").

Prompts come from the tokenizer's own chat template (no hand-written special tokens, so no doubled BOS); the
assistant turn opens with ``Answer:`` and the label is `` <answer>\n`` (prompt tokens masked), so the visible
text is ``Answer: <answer>`` followed by the newline that stops generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

IGNORE = -100
SYSTEM_PROMPT = "Answer the question with a short answer: a few words, no explanation."
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Example:
    """Token ids and labels of one sequence (labels are ``IGNORE`` where no loss is taken)."""
    input_ids: list[int]
    labels: list[int]


def format_passage(title: str | None, text: str) -> str:
    """The one textual form of a passage (training, bank, prompts)."""
    title = (title or "").strip()
    return f"{title}: {text.strip()}" if title else text.strip()


def passage_example(tokenizer, title: str | None, text: str, max_len: int) -> Example:
    """A passage for the LM loss (equation 1): labels are the input ids, cut to ``max_len`` tokens."""
    ids = tokenizer(format_passage(title, text), add_special_tokens=True, truncation=True,
                    max_length=max_len)["input_ids"]
    return Example(list(ids), list(ids))


def _truncate_text(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def user_message(question: str, passages: Sequence[tuple[str | None, str]] | None = None) -> str:
    """The user turn: ``Passage i: …`` lines (with context) then the question."""
    lines = [f"Passage {i}: {format_passage(title, text)}" for i, (title, text) in enumerate(passages or [])]
    lines.append(f"Question: {question.strip()}")
    return "\n".join(lines)


def prompt_ids(tokenizer, question: str, passages: Sequence[tuple[str | None, str]] | None = None,
               max_len: int = 2048) -> list[int]:
    """Chat-template prompt ending in ``Answer:``; passages (if any) are shortened evenly to fit ``max_len``."""
    if passages:
        budget = max(16, (max_len - 96) // len(passages))
        passages = [(title, _truncate_text(tokenizer, text, budget)) for title, text in passages]
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message(question, passages)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
    # The template already holds any BOS the model wants: add none of the tokenizer's own.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids[-max_len:])


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Label tokens: a space, the answer, the newline that ends it."""
    return list(tokenizer(f" {answer.strip()}\n", add_special_tokens=False)["input_ids"])


def qa_example(tokenizer, question: str, answer: str, passages: Sequence[tuple[str | None, str]] | None = None,
               max_len: int = 2048, full_text_loss: bool = False) -> Example:
    """Prompt + answer; loss on the answer tokens only (``full_text_loss``: on every token, the LM ablation)."""
    prompt = prompt_ids(tokenizer, question, passages, max_len)
    target = answer_ids(tokenizer, answer)
    labels = (list(prompt) if full_text_loss else [IGNORE] * len(prompt)) + target
    return Example(prompt + target, labels)


def extract_answer(generated: str, stop: str = "\n") -> str:
    """The text after the last ``Answer:`` up to the first ``stop`` (``generation.stop``, a newline by default),
    leading whitespace skipped first.

    Small chat models often put a newline right after ``Answer:``; skipping leading whitespace before the
    stop rule keeps such answers (method.md equation 4), for every method alike.
    """
    if ANSWER_PREFIX in generated:
        generated = generated.rsplit(ANSWER_PREFIX, 1)[1]
    return generated.lstrip().split(stop, 1)[0].strip()
