"""Prompts and passages as token ids: the chat template, one passage format and cut, answer labels, answer extraction.

One function formats a passage (:func:`format_passage`) and one cuts it to a token budget (:func:`cut_passage`)
for the places that use passages: the inner-step LM loss in training, the Gradient Bank, online gradients and —
with ``prompt_passages = "as_gradient"`` — the in-context prompt, which then holds exactly the text whose
gradient the method applies. The public code formatted passages differently in training and banking (a
train/test mismatch, method.md "Known flaws"). The learner's ``passage_format`` chooses the text: ``text`` (the
passage alone, as the public code) or ``title_text`` (``"{title}: {text}"``).

A passage for the LM loss starts with the tokenizer's own BOS, or — for tokenizers that add none, such as
SmolLM2's — with its document separator (``<|endoftext|>``), so the passage's first token is predicted too.

Prompts come from the tokenizer's own chat template (no hand-written special tokens, so no doubled BOS), rendered
with a fixed ``date_string`` (templates such as Llama 3.x's otherwise print today's date: prompts would change
with the calendar). The assistant turn opens with ``Answer:``; the label is `` <answer>`` followed by the
template's end-of-turn token (:func:`end_of_turn`, ChatML's ``<|im_end|>``), exactly how the template closes an
assistant answer — the same tokens for training's meta loss and for every method's answer NLL. An over-long prompt
loses passage text (the only elastic part), never the template or the question.

``prompt_style`` (learner config) frames every method's prompt alike: ``instruct`` (a system instruction, as the
public code) or ``example`` (the same instruction plus one worked question and its short answer in the chat, which
small models need to answer with a short phrase instead of a sentence). The worked example is invented and shares
no question template, passage template or answer value with the probe or the bundled datasets
(``tests/test_worked_example.py`` checks it against them). ``context_order``: the passages in rank order
(``rank``, the public code's) or ``reversed``, the best-ranked nearest the question, which small models read best.

Answer kinds (:data:`metrics.ANSWER_KINDS`, declared per dataset and carried by each task): the instruction and the
user turn ask for the kind's answer — a short phrase, ``yes``/``no`` (``maybe`` where the dataset allows it), or
the letter of one of the options listed under the question (``Choices:`` then ``A. …``, as the public code). With
``prompt_style = "instruct"`` (the Llama presets) the yes/no and multiple-choice instructions are the public code's
wording; ``example`` shows worked questions of the same kind. :func:`metrics.extract` reads the answer back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from regrad_lib.config import LearnerConfig
from regrad_lib.data.metrics import labels as kind_labels

IGNORE = -100
SYSTEM_PROMPT = "Answer the question with a short answer: a few words, no explanation."
ANSWER_PREFIX = "Answer:"
DOCUMENT_SEPARATORS = ("<|endoftext|>",)


@dataclass(frozen=True)
class WorkedExample:
    """A worked question of ``prompt_style = "example"``: a passage (``title``, ``text``) holding several facts,
    a question about one of them, its short answer. ``subject``: the name the question is about (its template is
    the question without it)."""
    title: str
    text: str
    question: str
    answer: str
    subject: str


# Invented place and facts: no question template, passage template or answer value of the probe or of a bundled
# dataset (tests/test_worked_example.py), so no method is taught a value it is later asked for. The passage holds
# three facts and the question asks one, as real passages hold many.
EXAMPLES = (
    WorkedExample("Quillon Marsh", "Quillon Marsh is a wetland reserve fed by two cold springs. Its wooden visitor "
                  "hut is known locally as the Tern House. Boats are not allowed on its ponds.",
                  "What do locals call the visitor hut at Quillon Marsh?", "Tern House", "Quillon Marsh"),
)

# The worked examples of the label kinds (invented like the short ones, in no dataset, corpus or probe): two each,
# answered differently, so the frame teaches the form of the answer and no preferred label.
KIND_EXAMPLES = {
    "yes_no": (
        (("Harrow Fen", "Harrow Fen is a small peat bog. Its boardwalk is closed every winter because it floods."),
         "Is the boardwalk of Harrow Fen open all year?", "no"),
        (("Tillet Mill", "Tillet Mill still grinds flour with a water wheel built in 1820."),
         "Does Tillet Mill use a water wheel?", "yes")),
    "multiple_choice": (
        (("Ostry Bay", "Ostry Bay is sheltered by a reef, so its water stays calm."),
         ("What keeps the water of Ostry Bay calm?", ("a dam", "a reef", "a wall", "an island")), "B"),
        (("Pell Square", "Pell Square is paved with red brick and has a fountain at its centre."),
         ("What is at the centre of Pell Square?", ("a statue", "a tree", "a clock", "a fountain")), "D")),
}
# The public code's instructions for its yes/no data sets (PubMedQA, LHF, HousingQA) and for CaseHold's options,
# used with prompt_style "instruct" (its CaseHold line "Complete the following excerpt from a US court opinion." is
# that data set's own; a generic question asks to choose an option instead). Passages sit in the user turn here,
# not in a CONTEXT block of the system prompt, so "according to the CONTEXT" reads "according to the passages".
PUBLIC_YES_NO = ("You are a helpful AI assistant who is ready to answer user's question. \nAnswer only {labels}!",
                 "You are a helpful AI assistant who is ready to answer user's question according to the passages. "
                 "\nYour answer should be concise, which means it must be {labels} only!")
PUBLIC_CHOICE = ("Choose the option that answers the question or completes the text.\nAnswer only with the option "
                 "letter: {letters}.",
                 "Choose the option that answers the question or completes the text.\nAlways answer ONLY with the "
                 "option letter: the final answer is X, where X ∈ {{{set}}}.")
# The demo frame's instructions ("example" style), as plain as its short-answer one.
EXAMPLE_INSTRUCTIONS = {"yes_no": "Answer the question with {labels}: one word, no explanation.",
                        "multiple_choice": "Answer with the letter of the correct option ({letters}), no explanation."}

Passages = Sequence[tuple[str | None, str]]


@dataclass(frozen=True)
class Example:
    """Token ids and labels of one sequence (labels are ``IGNORE`` where no loss is taken).

    ``truncated``: how many passages of its prompt were shortened to fit ``max_prompt_len``.
    """
    input_ids: list[int]
    labels: list[int]
    truncated: int = 0


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    truncated: int = 0          # passages shortened to fit the budget


def format_passage(title: str | None, text: str, passage_format: str = "text") -> str:
    """The one textual form of a passage (training, bank, prompts): the text, or ``"{title}: {text}"``."""
    title, text = (title or "").strip(), text.strip()
    if passage_format == "title_text" and title:
        return f"{title}: {text}"
    if passage_format not in ("text", "title_text"):
        raise ValueError(f"passage_format={passage_format!r}: choose 'text' or 'title_text'")
    return text


def document_start(tokenizer) -> list[int]:
    """The token(s) to put before a passage: none when the tokenizer adds its own BOS, else its document
    separator (e.g. ``<|endoftext|>``) or, failing that, its BOS token."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(plain) and with_special[-len(plain):] == plain:
        return []                                  # the tokenizer prepends its BOS itself
    vocab = tokenizer.get_vocab()
    for token in DOCUMENT_SEPARATORS:
        if token in vocab and token in tokenizer.all_special_tokens:
            return [vocab[token]]
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _added_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer itself adds to a text (a BOS, for Llama's)."""
    return len(tokenizer("a", add_special_tokens=True)["input_ids"]) - len(tokenizer("a", add_special_tokens=False)
                                                                            ["input_ids"])


def cut_passage(tokenizer, title: str | None, text: str, max_len: int, passage_format: str = "text",
                start: list[int] | None = None) -> str:
    """The passage's text (:func:`format_passage`) cut to what fits in ``max_len`` tokens after its document start
    (whole when it fits): the one cut of training's inner step, the bank, online gradients and — with
    ``prompt_passages = "as_gradient"`` — the prompt.

    The cut text is a prefix of the formatted text, ends without whitespace and tokenises back to at most the
    budget, so its tokens are exactly the LM sequence's (:func:`passage_example`) after the start token.
    """
    start = document_start(tokenizer) if start is None else start
    full = format_passage(title, text, passage_format)
    room = max_len - len(start) - _added_tokens(tokenizer)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if len(ids) <= room:
        return full
    for n in range(max(room, 0), max(room - 8, 0) - 1, -1):   # a cut inside a character or a merge: a token less
        cut = tokenizer.decode(ids[:n], skip_special_tokens=False, clean_up_tokenization_spaces=False).rstrip()
        if full.startswith(cut) and len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= room:
            return cut
    raise ValueError(f"could not cut the passage {full[:60]!r} to {max_len} tokens: its first tokens do not decode "
                     "to a prefix of its text with this tokenizer")


def passage_example(tokenizer, title: str | None, text: str, max_len: int, passage_format: str = "text",
                    start: list[int] | None = None) -> Example:
    """A passage for the LM loss (equation 1): start token + passage cut by :func:`cut_passage` to ``max_len``
    tokens, labels = input ids.

    ``start``: :func:`document_start` of the tokenizer, when the caller has it already (a batch).
    """
    start = document_start(tokenizer) if start is None else start
    cut = cut_passage(tokenizer, title, text, max_len, passage_format, start)
    ids = list(start) + list(tokenizer(cut, add_special_tokens=True)["input_ids"])
    return Example(ids, list(ids))


def _said(words: Sequence[str]) -> str:
    """'yes' or 'no'; 'yes', 'no' or 'maybe' (or A, B, C, D or E without quotes: ``words`` given bare)."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def instruction(kind: str = "short", choices: Sequence[str] = (), style: str = "instruct",
                with_passages: bool = False) -> str:
    """The system instruction asking for an answer of ``kind`` (the yes/no labels or the options in ``choices``)."""
    allowed = kind_labels(kind, choices)
    if kind == "short":
        return SYSTEM_PROMPT
    quoted, letters = _said([f"'{x}'" for x in allowed]), _said(list(allowed))
    if style == "example":
        return EXAMPLE_INSTRUCTIONS[kind].format(labels=quoted, letters=letters)
    if kind == "yes_no":
        return PUBLIC_YES_NO[with_passages].format(labels=quoted)
    return PUBLIC_CHOICE[with_passages].format(letters=letters, set=", ".join(allowed))


def question_text(question: str, kind: str = "short", choices: Sequence[str] = ()) -> str:
    """The question, followed for a multiple-choice one by its lettered options (the public code's layout)."""
    if kind != "multiple_choice":
        return question.strip()
    options = [f"{letter}. {option.strip()}" for letter, option in zip(kind_labels(kind, choices), choices)]
    return "\n".join([question.strip(), "Choices:", *options])


def user_message(question: str, passages: Passages | None = None, passage_format: str = "text",
                 context_order: str = "rank") -> str:
    """The user turn: ``Passage i: …`` lines (with context; best-ranked first, or last with ``reversed``) then the
    question (:func:`question_text`)."""
    passages = list(passages or [])
    if context_order == "reversed":
        passages = passages[::-1]
    elif context_order != "rank":
        raise ValueError(f"context_order={context_order!r}: choose 'rank' or 'reversed'")
    lines = [f"Passage {i}: {format_passage(title, text, passage_format)}" for i, (title, text) in enumerate(passages)]
    lines.append(f"Question: {question.strip()}")
    return "\n".join(lines)


def messages(question: str, passages: Passages | None, cfg: LearnerConfig, kind: str = "short",
             choices: Sequence[str] = ()) -> list[dict]:
    """The chat of one prompt (system instruction, the worked examples for ``prompt_style='example'``, the
    question); the frame is the same for every method, only the passages differ (an example shows its own
    passage when the prompt has passages). ``kind``/``choices``: the answer kind asked for (module docstring)."""
    chat = [{"role": "system", "content": instruction(kind, choices, cfg.prompt_style, bool(passages))}]
    if cfg.prompt_style == "example":
        examples = [((e.title, e.text), e.question, e.answer) for e in EXAMPLES] if kind == "short" \
            else KIND_EXAMPLES[kind]
        for passage, example_question, example_answer in examples:
            shown = [passage] if passages else None
            text = question_text(example_question[0], kind, example_question[1]) if kind == "multiple_choice" \
                else example_question
            chat += [{"role": "user", "content": user_message(text, shown, cfg.passage_format)},
                     {"role": "assistant", "content": f"{ANSWER_PREFIX} {example_answer}"}]
    chat.append({"role": "user", "content": user_message(question_text(question, kind, choices), passages,
                                                         cfg.passage_format, cfg.context_order)})
    return chat


def _render(tokenizer, question: str, passages: Passages | None, cfg: LearnerConfig, kind: str = "short",
            choices: Sequence[str] = ()) -> list[int]:
    text = tokenizer.apply_chat_template(messages(question, passages, cfg, kind, choices), tokenize=False,
                                         add_generation_prompt=True, date_string=cfg.chat_date) + ANSWER_PREFIX
    # The template already holds any BOS the model wants: add none of the tokenizer's own.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _caps(lengths: list[int], budget: int) -> list[int]:
    """Per-passage token caps summing to at most ``budget``: short passages whole, long ones cut to one cap."""
    lo, hi = 0, max(lengths)
    while lo < hi:                       # the largest common cap c with sum(min(len, c)) <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(n, mid) for n in lengths) <= budget else (lo, mid - 1)
    return [min(n, lo) for n in lengths]


def prompt_passage_len(cfg: LearnerConfig, stage: str) -> int | None:
    """Each prompt passage's token budget: with ``prompt_passages = "as_gradient"`` the one its gradient is taken
    at (``max_context_len`` in training, ``bank_context_len`` in evaluation: the bank and online gradients), so the
    prompt holds the very text whose gradient is applied; None (whole passages) with ``"whole"``."""
    if stage not in ("train", "eval"):
        raise ValueError(f"stage={stage!r}: choose 'train' or 'eval'")
    if cfg.prompt_passages == "whole":
        return None
    return cfg.max_context_len if stage == "train" else cfg.bank_context_len


def build_prompt(tokenizer, question: str, passages: Passages | None = None, cfg: LearnerConfig | None = None,
                 passage_len: int | None = None, *, kind: str = "short", choices: Sequence[str] = ()) -> Prompt:
    """Chat-template prompt ending in ``Answer:`` asking for an answer of ``kind``. ``passage_len``: each passage
    cut first by :func:`cut_passage` (as its gradient; :func:`prompt_passage_len`); over ``cfg.max_prompt_len``
    tokens only passage text is cut."""
    cfg = cfg or LearnerConfig()
    if passages and passage_len is not None:
        start = document_start(tokenizer)
        passages = [(None, cut_passage(tokenizer, title, text, passage_len, cfg.passage_format, start))
                    for title, text in passages]
    ids = _render(tokenizer, question, passages, cfg, kind, choices)
    limit = cfg.max_prompt_len
    if len(ids) <= limit:
        return Prompt(ids)
    frame = _render(tokenizer, question, [(title, "") for title, _ in passages] if passages else None, cfg, kind,
                    choices)
    if not passages or len(frame) + len(passages) > limit:
        raise ValueError(f"the prompt of question {question[:80]!r} needs {len(frame)} tokens without passage text, "
                         f"over the learner's max_prompt_len={limit}: raise max_prompt_len or shorten the question")
    tokens = [tokenizer(text.strip(), add_special_tokens=False)["input_ids"] for _, text in passages]
    budget = limit - len(frame)
    for _ in range(8):     # re-tokenising cut text can merge differently: shrink until it fits
        caps = _caps([len(t) for t in tokens], budget)
        cut = [(title, tokenizer.decode(t[:c])) for (title, _), t, c in zip(passages, tokens, caps)]
        ids = _render(tokenizer, question, cut, cfg, kind, choices)
        if len(ids) <= limit:
            return Prompt(ids, sum(c < len(t) for c, t in zip(caps, tokens)))
        budget -= len(ids) - limit
    raise ValueError(f"could not fit the passages of question {question[:80]!r} into max_prompt_len={limit}")


def prompt_ids(tokenizer, question: str, passages: Passages | None = None,
               cfg: LearnerConfig | None = None, passage_len: int | None = None, *, kind: str = "short",
               choices: Sequence[str] = ()) -> list[int]:
    """The token ids of :func:`build_prompt`."""
    return build_prompt(tokenizer, question, passages, cfg, passage_len, kind=kind, choices=choices).ids


def end_of_turn(tokenizer) -> list[int]:
    """The token the chat template closes an assistant message with (ChatML's ``<|im_end|>``, Llama 3's
    ``<|eot_id|>``): how the worked examples end each answer, so the answer label ends with it too."""
    marker = f"{ANSWER_PREFIX} Tern"
    chat = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, date_string=LearnerConfig.chat_date)
    tail = tokenizer(text[text.rindex(marker) + len(marker):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if not tail or tail[0] not in special:
        raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} closes an "
                         f"assistant message with {tokenizer.decode(tail[:3])!r}, not a special end-of-turn token: "
                         "answer labels need one")
    return tail[:1]


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Label tokens (``L_ans``, and every method's answer NLL): a space, the answer, the end-of-turn token that
    closes the worked examples' answers (:func:`end_of_turn`)."""
    return list(tokenizer(f" {answer.strip()}", add_special_tokens=False)["input_ids"]) + end_of_turn(tokenizer)


def qa_example(tokenizer, question: str, answer: str, passages: Passages | None = None,
               cfg: LearnerConfig | None = None, passage_len: int | None = None, *, kind: str = "short",
               choices: Sequence[str] = ()) -> Example:
    """Prompt + answer; loss on the answer tokens only (``L_ans``, equation 3)."""
    prompt = build_prompt(tokenizer, question, passages, cfg, passage_len, kind=kind, choices=choices)
    target = answer_ids(tokenizer, answer)
    return Example(prompt.ids + target, [IGNORE] * len(prompt.ids) + target, prompt.truncated)


def extract_answer(generated: str, stop: str = "\n") -> str:
    """The text after the last ``Answer:`` up to the first ``stop`` (``generation.stop``, a newline by default),
    leading whitespace skipped first.

    Small chat models often put a newline right after ``Answer:``; skipping leading whitespace before the
    stop rule keeps such answers (method.md equation 4), for every method alike.
    """
    if ANSWER_PREFIX in generated:
        generated = generated.rsplit(ANSWER_PREFIX, 1)[1]
    return generated.lstrip().split(stop, 1)[0].strip()
