"""What each method sees and how it is scored: every method's answer NLL scores exactly the answer and
the end-of-turn token the frame teaches, the same tokens as training's label; with ``prompt_passages =
"as_gradient"`` the passages in a prompt are, token for token, the passages whose gradients the bank holds."""

import re

import pytest
import torch

from regrad_lib import config
from regrad_lib.answering import harness, specs
from regrad_lib.bank import encode, on_disk, reader
from regrad_lib.core import generation, regrad, task_batches
from regrad_lib.data import prompts
from regrad_lib.evaluation import evaluate
from regrad_lib.io import artifacts, paths
from regrad_lib.testing import saved_trained_run

# the bank's passage budget and training's differ, so a method that takes one for the other shows
RUN, DATASET, BUDGET, TRAIN_BUDGET = "frametest", "frame-ds", 24, 40
LONG = [("Nile", "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean "
                 "Sea and is among the longest rivers in the world, draining eleven countries."),
        ("Kyoto", "Kyoto is a city on the island of Honshu in Japan. It was the capital of Japan for more than a "
                  "thousand years and is known for its temples, gardens and wooden houses."),
        ("Paris", "Paris is the capital and most populous city of France, on the river Seine in the north of the "
                  "country, with an estimated population of two million residents."),
        ("Everest", "Mount Everest is Earth's highest mountain above sea level, in the Mahalangur Himal sub-range "
                    "of the Himalayas, on the border between Nepal and China.")]


def _records():
    return [{"test_id": i, "question": f"Which place is {'very ' * i}old?", "answers": [LONG[i][0], "alias"],
             "passages": [LONG[(i + j) % 4][1] for j in range(3)], "titles": [LONG[(i + j) % 4][0] for j in range(3)],
             "passage_ids": [f"p{(i + j) % 4}" for j in range(3)], "scores": [3.0, 2.0, 1.0]} for i in range(4)]


def _preset(prompt_passages="as_gradient"):
    return config.load_preset("tiny", {"learner": {
        "prompt_style": "example", "passage_format": "title_text", "context_order": "reversed",
        "max_context_len": TRAIN_BUDGET, "bank_context_len": BUDGET, "max_prompt_len": 1024, "blind_context": False,
        "prompt_passages": prompt_passages}})


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    learner = saved_trained_run(RUN, _preset())
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), _records())
    encode.encode(RUN, DATASET, "dev", scheme="fp32", batch_size=4, learner=learner, overwrite=True)
    return learner, evaluate.load_tasks(DATASET), reader.open_bank(3, RUN, DATASET, "dev", "fp32", learner=learner)


def _captured(monkeypatch, learner, items, bank_, method):
    """The prompt ids and scored ids the harness hands to decoding for ``method``, by row (input order)."""
    seen = {}
    real = generation.generate

    def spy(model, tok, prompt_ids, **kwargs):
        for p, s in zip(prompt_ids, kwargs["score_ids"]):
            seen[tuple(p)] = list(s)
        return real(model, tok, prompt_ids, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    harness.run_method(method, learner, items, bank=bank_, batch_size=3)
    monkeypatch.undo()
    out = []
    for task in items:
        prompt = harness.prompt_of(learner, task, specs.SPECS[method].context).ids
        out.append((prompt, seen[tuple(prompt)]))
    return out


def _passages_in(prompt_text: str) -> list[str]:
    """The passage lines of the question's own user turn (the last one)."""
    turn = prompt_text.rsplit("<|im_start|>user\n", 1)[1]
    return re.findall(r"^Passage \d+: (.*)$", turn.split("\nQuestion: ")[0], flags=re.MULTILINE)


@pytest.mark.parametrize("method", specs.METHODS)
def test_every_method_scores_the_answer_and_the_end_of_turn_only(run, monkeypatch, method):
    learner, items, bank_ = run
    tok, cfg = learner.tokenizer, learner.preset.learner
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert prompts.end_of_turn(tok) == [eot]
    for task, (prompt, scored) in zip(items, _captured(monkeypatch, learner, items, bank_, method)):
        assert tok.decode(scored) == f" {task.answer}<|im_end|>" and scored[-1] == eot
        assert scored[:-1] == tok(f" {task.answer}", add_special_tokens=False)["input_ids"]
        # the frame teaches exactly these tokens: the chat with the answer as an assistant turn, up to its end
        chat = prompts.messages(task.question, task.passages if specs.SPECS[method].context else None, cfg)
        if specs.SPECS[method].context:
            chat[-1]["content"] = prompts.user_message(task.question, [(None, p) for p in _passages_in(
                tok.decode(prompt))][::-1], cfg.passage_format, cfg.context_order)
        whole = tok.apply_chat_template(chat + [{"role": "assistant", "content": f"Answer: {task.answer}"}],
                                        tokenize=False, date_string=cfg.chat_date)
        assert whole.startswith(tok.decode(prompt + scored))
        # training's meta loss takes the very same label after the same prompt frame (its passages cut at
        # training's budget; at the bank's budget, token for token this prompt)
        context = specs.SPECS[method].context
        train = task_batches.qa_examples(tok, [task], cfg, with_context=context)[0]
        n = len(scored)
        assert train.input_ids[-n:] == train.labels[-n:] == scored
        assert set(train.labels[:-n]) == {prompts.IGNORE}
        assert task_batches.qa_examples(tok, [task], cfg, with_context=context, stage="eval")[0].input_ids == \
            prompt + scored
        assert (train.input_ids == prompt + scored) is not context   # passages in the prompt: cut otherwise


def test_answer_nll_of_the_harness_is_the_label_nll(run):
    """rag's answer NLL (from the prefill's cache) equals the base model's mean NLL of answer + end-of-turn."""
    learner, items, _ = run
    rows = harness.run_method("rag", learner, items)
    want = generation.answer_nll(learner, items, None, context=True)
    assert [r["answer_nll"] for r in rows] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("method", ["rag", "regrad_icl"])
def test_prompt_passages_are_the_banks_passages_token_for_token(run, method):
    learner, items, bank_ = run
    tok, cfg = learner.tokenizer, learner.preset.learner
    start = prompts.document_start(tok)
    for task in items:
        shown = _passages_in(tok.decode(harness.prompt_of(learner, task, specs.SPECS[method].context).ids))[::-1]
        assert len(shown) == 3
        for (title, text), pid, in_prompt in zip(task.passages, task.passage_ids, shown):
            banked = task_batches.passage_batch(tok, [(title, text)], cfg.bank_context_len, cfg.passage_format)
            ids = banked.input_ids[0][banked.attention_mask[0].bool()].tolist()
            assert len(tok(prompts.format_passage(title, text, cfg.passage_format))["input_ids"]) > BUDGET  # cut
            assert ids[:len(start)] == start and len(ids) <= BUDGET
            assert tok(in_prompt, add_special_tokens=False)["input_ids"] == ids[len(start):]
            assert in_prompt == tok.decode(ids[len(start):])
            # and the bank's gradient is the gradient of exactly that text
            again = regrad.summed_gradient(learner.model, learner.phi,
                                           task_batches.passage_batch(tok, [(None, in_prompt)], 10 * BUDGET, "text"))
            row = bank_.get(pid)
            for name in again:
                torch.testing.assert_close(row[name], again[name], rtol=1e-4, atol=1e-7)


def test_training_prompt_passages_are_the_inner_steps_passages(run):
    learner, items, _ = run
    tok, cfg = learner.tokenizer, learner.preset.learner
    batch = task_batches.task_batch(tok, items[:2], cfg)            # blind_context = false: passages in the prompt
    start = prompts.document_start(tok)
    inner = [tok.decode(row[m.bool()].tolist()[len(start):])
             for row, m in zip(batch.passages.input_ids, batch.passages.attention_mask)]
    shown = [p for row in batch.qa.input_ids for p in _passages_in(tok.decode(row))[::-1]]
    assert shown == inner and len(inner) == 6
    # cut at training's budget (max_context_len), not the bank's: every passage here is longer than both
    lengths = batch.passages.attention_mask.sum(dim=1).tolist()
    assert max(lengths) == TRAIN_BUDGET and min(lengths) > BUDGET
    assert prompts.prompt_passage_len(cfg, "train") == TRAIN_BUDGET != prompts.prompt_passage_len(cfg, "eval")


def test_prompt_passages_whole_changes_only_the_prompts_passages(run, tiny_model_dir):
    """``prompt_passages``: "whole" puts whole passages in the prompt; the bank's and the other prompts' tokens
    stay as they were."""
    learner, items, _ = run
    tok = learner.tokenizer
    whole, cut = _preset("whole").learner, learner.preset.learner
    task = items[0]
    assert prompts.prompt_passage_len(whole, "eval") is None and prompts.prompt_passage_len(cut, "eval") == BUDGET
    full = _passages_in(tok.decode(prompts.prompt_ids(tok, task.question, task.passages, whole,
                                                      prompts.prompt_passage_len(whole, "eval"))))
    assert full == [prompts.format_passage(t, x, "title_text") for t, x in task.passages][::-1]
    short = _passages_in(tok.decode(harness.prompt_of(learner, task, True).ids))
    assert all(f.startswith(s) and len(s) < len(f) for f, s in zip(full, short))
    for context in (False,):
        assert prompts.prompt_ids(tok, task.question, None, whole) == harness.prompt_of(learner, task, context).ids
    cut_ids = task_batches.task_batch(tok, [task], cut).passages.input_ids
    assert task_batches.task_batch(tok, [task], whole).passages.input_ids.equal(cut_ids)
    with pytest.raises(config.ConfigError, match="prompt_passages"):
        config.load_preset("tiny", {"learner": {"prompt_passages": "cut"}})


def test_a_bank_cut_at_another_budget_is_refused(run):
    learner, items, bank_ = run
    other = saved_trained_run(RUN + "-other", config.load_preset("tiny", {"learner": {
        **learner.preset.learner.__dict__, "bank_context_len": 2 * BUDGET}}))
    other.phi, other.alpha = learner.phi, learner.alpha          # the same meta weights, another passage cut
    with pytest.raises(on_disk.BankMismatchError, match="bank_context_len: bank 24 != learner 48"):
        harness.run_method("regrad", other, items, bank=bank_)
