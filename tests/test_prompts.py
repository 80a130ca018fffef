import pytest

from regrad_lib import prompts

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
    assert prompts.format_passage("Paris", " Paris is big. ") == "Paris: Paris is big."
    assert prompts.format_passage(None, "x") == "x"
    assert prompts.user_message("Q?", [("T", "body")]) == "Passage 0: T: body\nQuestion: Q?"


def test_prompt_uses_chat_template_and_masks_prompt(tiny):
    _, tok = tiny
    ex = prompts.qa_example(tok, "What is the capital of France?", "Paris", [("Paris", "Paris is in France.")])
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system") and "Passage 0: Paris: Paris is in France." in text
    assert text.endswith("Answer: Paris\n")
    n_answer = sum(1 for x in ex.labels if x != prompts.IGNORE)
    assert tok.decode(ex.input_ids[-n_answer:]) == " Paris\n"
    full = prompts.qa_example(tok, "Q?", "A", full_text_loss=True)
    assert full.labels == full.input_ids


def test_no_doubled_bos_with_a_template_that_writes_bos(tiny):
    _, tok = tiny
    tok = tok.__class__.from_pretrained(tok.name_or_path)
    tok.chat_template = LLAMA3_TEMPLATE
    ids = prompts.prompt_ids(tok, "Who?")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_long_passages_are_shortened_to_fit(tiny):
    _, tok = tiny
    long = "word " * 2000
    ids = prompts.prompt_ids(tok, "Q?", [("A", long), ("B", long)], max_len=256)
    assert len(ids) <= 256
    assert tok.decode(ids).endswith("Answer:")
