"""Batched greedy decoding: equal to Hugging Face's one-prompt-at-a-time generate, token for token."""

import copy
import math

import pytest
import torch

from regrad_lib import config
from regrad_lib.core import generation, lora, regrad
from regrad_lib.data import prompts

QUESTIONS = ["What is the capital of France?", "Who wrote it?",
             "Where is the Nile river, the longest river of Africa, located today?", "Kyoto?"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(tiny):
    """A float64 tiny model with LoRA (B non-zero) and a boosted newline token, so rows stop at different steps."""
    model, tok = tiny
    model = copy.deepcopy(model)
    lora.attach(model, config.load_preset("tiny").peft)
    model.double()
    phi = {n: p.detach() for n, p in lora.parameters(model).items()}
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in lora.parameters(model).items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
        newline = tok("\n", add_special_tokens=False)["input_ids"]
        assert len(newline) == 1
        model.get_input_embeddings().weight[newline[0]] *= 3.0   # tied: newline becomes a likely next token
    per_row = {n: torch.stack([p + 0.3 * torch.randn_like(p) for _ in QUESTIONS]) for n, p in phi.items()}
    prompt_ids = [prompts.prompt_ids(tok, q) for q in QUESTIONS]
    assert len({len(p) for p in prompt_ids}) == len(QUESTIONS)   # different lengths: real left padding
    return model, tok, phi, per_row, prompt_ids


def _reference(model, tok, prompt, weights):
    """One prompt, no padding, ``model.generate``; cut where :func:`generation.greedy` must stop."""
    stops = generation.eos_ids(model, tok)
    context = lora.use(model, weights) if weights is not None else lora.disabled(model)
    with context:
        ids = torch.tensor([prompt])
        full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=sorted(stops), pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    out = []
    for token in full:
        if token in stops:
            break
        out.append(token)
        if generation.stop_reached(tok.decode(out, skip_special_tokens=True)):
            break
    return out


def test_stop_rule():
    assert not generation.stop_reached("")
    assert not generation.stop_reached("\n")            # a newline before the answer is skipped
    assert not generation.stop_reached(" \n \n Paris")
    assert generation.stop_reached("\n Paris\n")
    assert generation.stop_reached("Paris\nMore")


def test_batched_equals_one_at_a_time_shared_weights(setup):
    model, tok, phi, _, prompt_ids = setup
    got = generation.greedy(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=phi)
    want = [_reference(model, tok, p, phi) for p in prompt_ids]
    assert got == want
    lengths = {len(g) for g in got}
    assert len(lengths) > 1 and min(lengths) < MAX_NEW     # rows finished at different steps (pruning path)
    assert any(generation.stop_reached(tok.decode(g)) for g in got)


def test_batched_equals_one_at_a_time_per_row_weights(setup):
    model, tok, _, per_row, prompt_ids = setup
    got = generation.greedy(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=per_row)
    want = [_reference(model, tok, p, {n: w[i] for n, w in per_row.items()}) for i, p in enumerate(prompt_ids)]
    assert got == want
    shared = generation.greedy(model, tok, prompt_ids, max_new_tokens=MAX_NEW,
                               weights={n: w[0] for n, w in per_row.items()})
    assert got != shared    # the per-row weights do change what is generated


def test_base_model_and_answers(setup):
    model, tok, _, _, prompt_ids = setup
    with lora.disabled(model):
        got = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW)
    want = [_reference(model, tok, p, None) for p in prompt_ids]
    assert [list(g.token_ids) for g in got] == want
    for g in got:
        assert g.text == tok.decode(list(g.token_ids), skip_special_tokens=True)
        assert g.answer == prompts.extract_answer(g.text)
        assert "\n" not in g.answer


def test_per_row_weights_must_match_prompts(setup):
    model, tok, _, per_row, prompt_ids = setup
    with pytest.raises(ValueError, match="per-row LoRA weights for 4 rows, but 2 prompts"):
        generation.greedy(model, tok, prompt_ids[:2], max_new_tokens=2, weights=per_row)
    assert generation.greedy(model, tok, [], max_new_tokens=2) == []


def test_answer_nll_from_the_prefill_cache_equals_a_full_forward_and_leaves_decoding_alone(setup):
    """generate(score_ids=...) scores the gold answer on the prompt's KV cache (left padding, per-row LoRA):
    the same NLL as one unpadded forward of prompt + answer, and the same tokens as without scoring."""
    model, tok, _, per_row, prompt_ids = setup
    answers = ["Paris", "Someone famous", "Egypt", "Japan, an island country"]
    gold = [prompts.answer_ids(tok, a) for a in answers]
    scored = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=per_row, score_ids=gold)
    plain = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=per_row)
    assert [g.token_ids for g in scored] == [g.token_ids for g in plain]
    for i, (prompt, target) in enumerate(zip(prompt_ids, gold)):
        example = prompts.Example(prompt + target, [prompts.IGNORE] * len(prompt) + target)
        batch = regrad.collate([example], tok.pad_token_id)
        with torch.no_grad(), lora.use(model, {n: w[i] for n, w in per_row.items()}):
            want = regrad.token_losses(model, batch).item()
        assert scored[i].answer_nll == pytest.approx(want, rel=1e-9)
    assert all(math.isnan(g.answer_nll) for g in plain)


def test_shared_prefix_length():
    assert generation.shared_prefix_length([list(range(40))]) == 0                         # one prompt
    assert generation.shared_prefix_length([list(range(40)), list(range(40))]) == 39       # each keeps a token
    assert generation.shared_prefix_length([list(range(30)) + [1], list(range(30)) + [2, 3]]) == 30
    assert generation.shared_prefix_length([list(range(10)) + [1], list(range(10)) + [2]]) == 0   # too short


def test_shared_prefix_gives_the_unshared_answers_and_nll(setup):
    """The common prefix's KV cache computed once (shared phi, base model) equals every row's own prefill:
    same tokens, answer NLL equal to float64 rounding; per-row weights never share."""
    model, tok, phi, per_row, prompt_ids = setup
    assert generation.shared_prefix_length(prompt_ids) >= generation.MIN_SHARED_PREFIX
    gold = [prompts.answer_ids(tok, a) for a in ["Paris", "Someone famous", "Egypt", "Japan, an island country"]]
    for weights, context in ((phi, lora.use(model, phi)), (None, lora.disabled(model))):
        with context:
            shared = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=weights,
                                         score_ids=gold)
            plain = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=weights,
                                        score_ids=gold, share_prefix=False)
        assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
        for a, b in zip(shared, plain):
            assert a.answer_nll == pytest.approx(b.answer_nll, rel=1e-9)
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        generation.greedy(model, tok, prompt_ids, max_new_tokens=1, weights=phi)
        assert calls[0][0] == 1                          # the prefix, once
        calls.clear()
        generation.greedy(model, tok, prompt_ids, max_new_tokens=1, weights=per_row)
        assert calls[0][0] == len(prompt_ids)            # per-row weights: every row's whole prompt
        assert calls[0][1] == max(map(len, prompt_ids))
    finally:
        hook.remove()


def test_margins_are_each_greedy_choice_top1_minus_top2_gap(setup):
    """One margin per generated token (plus the end-of-sequence choice that ended a row), each the gap between
    the two largest logits of an unpadded forward of prompt + tokens so far; min_margin their smallest."""
    model, tok, _, per_row, prompt_ids = setup
    got = generation.generate(model, tok, prompt_ids, max_new_tokens=MAX_NEW, weights=per_row)
    stops = generation.eos_ids(model, tok)
    for i, (prompt, g) in enumerate(zip(prompt_ids, got)):
        with torch.no_grad(), lora.use(model, {n: w[i] for n, w in per_row.items()}):
            ids = torch.tensor([prompt + list(g.token_ids)])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, len(prompt) - 1:]
        top2 = logits.topk(2, dim=-1).values
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        ended_by_eos = len(g.token_ids) < MAX_NEW and not generation.stop_reached(g.text)
        assert int(logits[len(g.token_ids)].argmax()) in stops if ended_by_eos else True
        want = gaps[:len(g.token_ids) + (1 if ended_by_eos else 0)]
        assert len(g.margins) == len(want) and g.margins == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert g.min_margin == min(g.margins) > 0
    assert generation.Generation((), "", "").min_margin == math.inf
