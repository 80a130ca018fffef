import pytest

from regrad_lib.config import LearnerConfig
from regrad_lib.core import task_batches
from regrad_lib.core.tiny_model import CHATML_TEMPLATE as CHATML
from regrad_lib.data import prompts

LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.mark.parametrize("text,expected", [
    ("Paris\nmore", "Paris"),
    ("\nParis\n", "Paris"),          # small chat models emit a newline right after "Answer:"
    ("  \n  Paris  ", "Paris"),
    ("Answer: Rome\n", "Rome"),
    ("I think. Answer: Answer: Oslo", "Oslo"),
    ("", ""),
])
def test_extract_answer(text, expected):
    assert prompts.extract_answer(text) == expected


def test_format_passage_is_shared():
    assert prompts.format_passage("Paris", " Paris is big. ") == "Paris is big."          # upstream: text only
    assert prompts.format_passage("Paris", " Paris is big. ", "title_text") == "Paris: Paris is big."
    assert prompts.format_passage(None, "x", "title_text") == "x"
    assert prompts.user_message("Q?", [("T", "body")]) == "Passage 0: body\nQuestion: Q?"
    assert prompts.user_message("Q?", [("T", "body")], "title_text") == "Passage 0: T: body\nQuestion: Q?"
    with pytest.raises(ValueError, match="passage_format"):
        prompts.format_passage("T", "x", "title")


def test_prompt_uses_chat_template_and_masks_prompt(tiny):
    _, tok = tiny
    cfg = LearnerConfig(passage_format="title_text")
    ex = prompts.qa_example(tok, "What is the capital of France?", "Paris", [("Paris", "Paris is in France.")], cfg)
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system") and "Passage 0: Paris: Paris is in France." in text
    assert text.endswith("Answer: Paris<|im_end|>")          # the answer ends as the template ends a turn
    n_answer = sum(1 for x in ex.labels if x != prompts.IGNORE)
    assert tok.decode(ex.input_ids[-n_answer:]) == " Paris<|im_end|>"
    assert ex.labels[:-n_answer] == [prompts.IGNORE] * (len(ex.labels) - n_answer)


def test_passage_format_changes_exactly_the_passage_text_everywhere(tiny):
    """Training passages, bank passages (the same passage_batch) and prompts all follow the one setting."""
    _, tok = tiny
    passage = [("Paris", "Paris is in France.")]
    for fmt, shown in (("text", "Paris is in France."), ("title_text", "Paris: Paris is in France.")):
        cfg = LearnerConfig(passage_format=fmt)
        lm = task_batches.passage_batch(tok, passage, 64, fmt)
        assert tok.decode(lm.input_ids[0], skip_special_tokens=True) == shown
        task = task_batches.Task(0, "Where?", ("France",), tuple(passage), ("1",))
        tb = task_batches.task_batch(tok, [task], cfg, with_context=True)
        assert tok.decode(tb.passages.input_ids[0], skip_special_tokens=True) == shown
        assert f"Passage 0: {shown}\nQuestion: Where?" in tok.decode(tb.qa.input_ids[0])


def _strftime_template(tok):
    tok = tok.__class__.from_pretrained(tok.name_or_path)
    # As Llama 3.x's template: today's date unless the caller passes date_string.
    tok.chat_template = ("{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
                         "{%- endif %}Today Date: {{ date_string }}\n" + CHATML)
    return tok


def test_prompts_do_not_depend_on_the_calendar(tiny, monkeypatch):
    import datetime as real_datetime

    from transformers.utils import chat_template_utils

    tok = _strftime_template(tiny[1])
    seen = {}
    for day in (real_datetime.datetime(2025, 1, 2), real_datetime.datetime(2031, 12, 30)):
        class Frozen(real_datetime.datetime):
            @classmethod
            def now(cls, tz=None, _day=day):
                return _day
        monkeypatch.setattr(chat_template_utils, "datetime", Frozen)
        seen[day] = prompts.prompt_ids(tok, "Who?")
        # the test could fail: without a fixed date the template does print the frozen day
        raw = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        assert day.strftime("%d %b %Y") in raw
    first, second = seen.values()
    assert first == second
    assert "Today Date: 26 Jul 2024" in tok.decode(first)
    other = prompts.prompt_ids(tok, "Who?", cfg=LearnerConfig(chat_date="1 Jan 2000"))
    assert "Today Date: 1 Jan 2000" in tok.decode(other)


def test_passages_start_with_a_document_token_when_the_tokenizer_adds_none(tiny):
    _, tok = tiny
    assert tok("Paris", add_special_tokens=True)["input_ids"] == tok("Paris", add_special_tokens=False)["input_ids"]
    ex = prompts.passage_example(tok, "T", "Paris is big.", 64)
    assert ex.input_ids[0] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert ex.input_ids[1:] == tok("Paris is big.", add_special_tokens=False)["input_ids"]
    assert ex.labels == ex.input_ids       # so the first passage token is predicted (a loss term of its own)
    assert len(prompts.passage_example(tok, "T", "word " * 100, 16).input_ids) == 16


def test_a_tokenizer_that_adds_its_own_bos_gets_no_second_one(tiny):
    from tokenizers import processors

    tok = tiny[1].__class__.from_pretrained(tiny[1].name_or_path)
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"{tok.bos_token} $A",
                                                                  special_tokens=[(tok.bos_token, bos)])
    assert tok("Paris")["input_ids"][0] == bos
    assert prompts.document_start(tok) == []
    ids = prompts.passage_example(tok, None, "Paris is big.", 64).input_ids
    assert ids[0] == bos and ids.count(bos) == 1


def test_no_doubled_bos_with_a_template_that_writes_bos(tiny):
    _, tok = tiny
    tok = tok.__class__.from_pretrained(tok.name_or_path)
    tok.chat_template = LLAMA3_TEMPLATE
    ids = prompts.prompt_ids(tok, "Who?")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_long_passages_are_shortened_to_fit_never_the_template(tiny):
    _, tok = tiny
    cfg = LearnerConfig(max_prompt_len=256)
    long, short = "word " * 2000, "A short passage."
    full = prompts.build_prompt(tok, "Which word?", [("A", short)], cfg)
    assert full.truncated == 0
    built = prompts.build_prompt(tok, "Which word?", [("A", long), ("B", short), ("C", long)], cfg)
    text = tok.decode(built.ids)
    assert len(built.ids) <= 256 and len(built.ids) > 200      # the budget is used, not wasted
    assert built.truncated == 2                                  # the two long ones; the short one kept whole
    assert text.startswith("<|im_start|>system\n" + prompts.SYSTEM_PROMPT)   # the header survives
    assert "Passage 1: A short passage.\n" in text and text.endswith("Question: Which word?<|im_end|>\n"
                                                                     "<|im_start|>assistant\nAnswer:")
    ex = prompts.qa_example(tok, "Which word?", "word", [("A", long)], cfg)
    assert ex.truncated == 1
    with pytest.raises(ValueError, match="max_prompt_len"):
        prompts.build_prompt(tok, "why " * 400, None, cfg)


def test_prompt_style_example_frames_every_method_alike(tiny):
    _, tok = tiny
    cfg = LearnerConfig(prompt_style="example")
    blind = tok.decode(prompts.prompt_ids(tok, "Who?", None, cfg))
    context = tok.decode(prompts.prompt_ids(tok, "Who?", [("T", "Body.")], cfg))
    for example in prompts.EXAMPLES:
        worked = f"Question: {example.question}<|im_end|>\n<|im_start|>assistant\nAnswer: {example.answer}<|im_end|>"
        assert worked in blind and worked in context
        assert f"Passage 0: {example.text}\nQuestion: {example.question}" in context and example.text not in blind
    assert blind.endswith("Question: Who?<|im_end|>\n<|im_start|>assistant\nAnswer:")
    plain = tok.decode(prompts.prompt_ids(tok, "Who?"))
    assert all(example.question not in plain for example in prompts.EXAMPLES)


def test_context_order_puts_the_best_passage_last(tiny):
    _, tok = tiny
    ranked = [("A", "First ranked."), ("B", "Second ranked.")]
    rank = tok.decode(prompts.prompt_ids(tok, "Q?", ranked))
    assert "Passage 0: First ranked.\nPassage 1: Second ranked.\nQuestion: Q?" in rank
    last = tok.decode(prompts.prompt_ids(tok, "Q?", ranked, LearnerConfig(context_order="reversed")))
    assert "Passage 0: Second ranked.\nPassage 1: First ranked.\nQuestion: Q?" in last


def test_the_answer_label_ends_with_the_templates_end_of_turn(tiny):
    _, tok = tiny
    assert prompts.end_of_turn(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    llama = tok.__class__.from_pretrained(tok.name_or_path)
    llama.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                            "<|eot_id|>"]})
    llama.chat_template = LLAMA3_TEMPLATE
    eot = llama.convert_tokens_to_ids("<|eot_id|>")
    assert prompts.end_of_turn(llama) == [eot] and prompts.answer_ids(llama, " Paris ")[-1] == eot
    assert llama.decode(prompts.answer_ids(llama, "Paris")) == " Paris<|eot_id|>"
    plain = tok.__class__.from_pretrained(tok.name_or_path)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    with pytest.raises(ValueError, match="end-of-turn"):
        prompts.answer_ids(plain, "Paris")


def test_cut_passage_is_a_prefix_whose_tokens_are_the_lm_sequence(tiny):
    import csv
    import itertools

    from regrad_lib.io import paths

    _, tok = tiny
    start = prompts.document_start(tok)
    with paths.sample_corpus().open(encoding="utf-8", newline="") as f:
        rows = list(itertools.islice(csv.reader(f, delimiter="\t"), 1, 61))
    cut_some = 0
    for (_, text, title), budget in zip(rows, itertools.cycle((16, 48, 128, 4096))):
        full = prompts.format_passage(title, text, "title_text")
        cut = prompts.cut_passage(tok, title, text, budget, "title_text")
        ids = prompts.passage_example(tok, title, text, budget, "title_text").input_ids
        assert full.startswith(cut) and cut == cut.rstrip() and len(ids) <= budget
        assert ids == start + tok(cut, add_special_tokens=False)["input_ids"]
        if cut != full:
            cut_some += 1
            assert len(ids) >= budget - 2           # the budget is used, not wasted
        else:
            assert len(tok(full)["input_ids"]) + len(start) <= budget
        assert prompts.cut_passage(tok, None, cut, budget) == cut    # cutting twice changes nothing
    assert cut_some > 20
