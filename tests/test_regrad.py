"""Numerical tests of the functional core against an independent slow path.

The references never call the functions under test (``token_losses``, ``summed_gradient``, ``group_gradients``,
``apply_update``): each LoRA is merged into its linear weight (``W + s·B·A``) with the LoRA layers switched off,
the model is called with those weights through ``torch.func.functional_call``, one unpadded example at a time,
and the loss is written out token by token (the mean over the labelled positions of ``-log softmax``); gradients
are autograd's through that path, and updates are plain arithmetic with the step size's hand value.
"""

import copy

import pytest
import torch

from regrad_lib import config
from regrad_lib.core import lora, regrad
from regrad_lib.data import prompts

PASSAGES = [("Paris", "Paris is the capital and most populous city of France."),
            ("Ada Lovelace", "Ada Lovelace was an English mathematician and writer, chiefly known for her work."),
            ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
            ("Kyoto", "Kyoto is a city on the island of Honshu in Japan.")]


@pytest.fixture()
def setup(tiny):
    """A float64 copy of the tiny model with LoRA attached and B made non-zero (so every tensor has a gradient)."""
    model, tok = tiny
    model = copy.deepcopy(model)
    peft = config.load_preset("tiny").peft
    lora.attach(model, peft)
    model.double()
    phi = lora.parameters(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model, tok, phi


def _passages(tok, items, max_len=64):
    return regrad.collate([prompts.passage_example(tok, t, x, max_len) for t, x in items], tok.pad_token_id)


def _example(tok, item, max_len=64):
    e = prompts.passage_example(tok, *item, max_len)
    assert e.labels == e.input_ids            # a passage: every token is its own label (equation 1)
    return e


def _hand_loss(model, phi, example):
    """The slow path's loss of one example: LoRA merged into the weights, no padding, no mask, the mean written out
    over the positions t >= 1 whose label is set: -log softmax(logits[t - 1])[label[t]]."""
    mods = lora.modules(model)
    weights = {f"{n}.base.weight": m.base.weight + m.scaling * phi[f"{n}.lora_B"] @ phi[f"{n}.lora_A"]
               for n, m in mods.items()}
    for m in mods.values():
        m.enabled = False
    try:
        logits = torch.func.functional_call(model, weights, (),
                                            {"input_ids": torch.tensor([example.input_ids])}).logits[0]
    finally:
        for m in mods.values():
            m.enabled = True
    terms = [-torch.log_softmax(logits[t - 1], dim=-1)[label]
             for t, label in enumerate(example.labels) if t >= 1 and label != prompts.IGNORE]
    return sum(terms) / len(terms)


def _hand_grad(model, phi, examples):
    """d/dphi of the sum of the examples' slow-path losses."""
    total = sum(_hand_loss(model, phi, e) for e in examples)
    return dict(zip(phi, torch.autograd.grad(total, list(phi.values()))))


def _one_by_one(model, phi, tok, items):
    return [_hand_grad(model, phi, [_example(tok, item)]) for item in items]


def _max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)).item() for n in b)


def test_token_losses_are_per_row_means_of_the_labelled_tokens(setup):
    """Rows of different lengths in one padded batch: each row's loss is the mean (not the sum) of its own
    labelled tokens' NLL; padding adds nothing."""
    model, tok, phi = setup
    examples = [_example(tok, item) for item in PASSAGES]
    assert len({len(e.input_ids) for e in examples}) > 1                 # the padding matters
    with torch.no_grad(), lora.use(model, phi):
        got = regrad.token_losses(model, _passages(tok, PASSAGES))
    with torch.no_grad():
        want = torch.stack([_hand_loss(model, phi, e) for e in examples])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert 2.0 < float(want.min()) and float(want.max()) < 20.0         # a mean NLL, not a sum over ~20 tokens


def test_apply_update_is_phi_minus_gamma_alpha_grad_by_hand():
    phi = {"m.lora_A": torch.full((2, 3), 1.0), "m.lora_B": torch.full((3, 2), -2.0)}
    grads = {"m.lora_A": torch.full((2, 3), 2.0), "m.lora_B": torch.full((3, 2), 4.0)}
    alpha = regrad.StepSizes(phi, "tie", 0.25)
    with torch.no_grad():
        alpha.values["m__lora_B"].fill_(0.5)
    out = regrad.apply_update(phi, grads, alpha, gamma=3.0)
    # A: 1 - 3 * 0.25 * 2 = -0.5; B: -2 - 3 * 0.5 * 4 = -8
    assert torch.equal(out["m.lora_A"], torch.full((2, 3), -0.5))
    assert torch.equal(out["m.lora_B"], torch.full((3, 2), -8.0))
    full = regrad.StepSizes(phi, "full", 0.1)
    with torch.no_grad():
        full.values["m__lora_A"][0, 1] = 1.0
    a = regrad.apply_update(phi, grads, full, gamma=1.0)["m.lora_A"]
    assert a[0, 1].item() == pytest.approx(-1.0) and a[1, 2].item() == pytest.approx(0.8)   # 1 - 2; 1 - 0.2


def test_summed_gradient_equals_sum_of_one_by_one(setup):
    model, tok, phi = setup
    ref = _one_by_one(model, phi, tok, PASSAGES)
    total = {n: sum(r[n] for r in ref) for n in phi}
    got = regrad.summed_gradient(model, phi, _passages(tok, PASSAGES))
    assert _max_rel(got, total) < 1e-10


def test_per_passage_gradients_equal_one_by_one(setup):
    model, tok, phi = setup
    ref = _one_by_one(model, phi, tok, PASSAGES)
    got, losses = regrad.per_passage_gradients(model, phi, _passages(tok, PASSAGES))
    errors = [_max_rel({n: got[n][i] for n in phi}, ref[i]) for i in range(len(PASSAGES))]
    print(f"per-passage gradients: max relative error {max(errors):.2e}")
    assert max(errors) < 1e-10
    with torch.no_grad():
        want = torch.stack([_hand_loss(model, phi, _example(tok, item)) for item in PASSAGES])
    torch.testing.assert_close(losses.detach(), want, rtol=1e-10, atol=1e-12)


def test_group_gradients_sum_within_groups(setup):
    model, tok, phi = setup
    ref = _one_by_one(model, phi, tok, PASSAGES)
    group = torch.tensor([1, 0, 1, 0])
    got, _ = regrad.group_gradients(model, phi, _passages(tok, PASSAGES), group, 2)
    for n in phi:
        torch.testing.assert_close(got[n][0], ref[1][n] + ref[3][n], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[n][1], ref[0][n] + ref[2][n], rtol=1e-10, atol=1e-12)


def test_zero_update_leaves_logits_unchanged(setup):
    model, tok, phi = setup
    alpha = regrad.StepSizes(phi, "tie", 1e-2)
    batch = _passages(tok, PASSAGES[:2])
    grads = regrad.summed_gradient(model, phi, batch)
    for gamma, zero_grads in ((0.0, False), (1.0, True)):
        g = {n: torch.zeros_like(v) for n, v in grads.items()} if zero_grads else grads
        adapted = regrad.apply_update(phi, g, alpha, gamma)
        with torch.no_grad(), lora.use(model, adapted):
            a = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with torch.no_grad(), lora.use(model, phi):
            b = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert torch.equal(a, b)


def test_per_row_weights_equal_shared_weights_row_by_row(setup):
    model, tok, phi = setup
    batch = _passages(tok, PASSAGES[:3])
    rows = {n: torch.stack([v * (1 + i) for i in range(3)]) for n, v in phi.items()}
    with torch.no_grad(), lora.use(model, rows):
        batched = regrad.token_losses(model, batch)
    for i in range(3):
        with torch.no_grad():
            single = _hand_loss(model, {n: v * (1 + i) for n, v in phi.items()}, _example(tok, PASSAGES[i]))
        torch.testing.assert_close(batched[i], single, rtol=1e-10, atol=1e-12)


def _qa(tok):
    return [prompts.qa_example(tok, "What is the capital of France?", "Paris"),
            prompts.qa_example(tok, "Where is Kyoto?", "Japan")]


def _tasks(tok):
    return regrad.TaskBatch(_passages(tok, PASSAGES), torch.tensor([0, 0, 1, 1]),
                            regrad.collate(_qa(tok), tok.pad_token_id))


@pytest.mark.parametrize("mode", ["fix", "same", "tie", "full"])
def test_meta_gradient_reaches_phi_and_alpha(setup, mode):
    model, tok, phi = setup
    alpha = regrad.StepSizes(phi, mode, 1e-2).double()
    loss = regrad.meta_losses(model, phi, alpha, _tasks(tok)).mean()
    params = list(phi.values()) + [p for p in alpha.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert len(grads) == len(phi) + {"fix": 0, "same": 1, "tie": len(phi), "full": len(phi)}[mode]


def test_meta_losses_equal_task_by_task(setup):
    model, tok, phi = setup
    alpha = regrad.StepSizes(phi, "tie", 1e-1).double()
    tasks = _tasks(tok)
    batched = regrad.meta_losses(model, phi, alpha, tasks)
    for t, rows in enumerate(([0, 1], [2, 3])):
        g = _hand_grad(model, phi, [_example(tok, PASSAGES[i]) for i in rows])
        adapted = {n: phi[n].detach() - 0.1 * g[n] for n in phi}            # equation 2 by hand, gamma 1
        with torch.no_grad():
            single = _hand_loss(model, adapted, _qa(tok)[t])
        torch.testing.assert_close(batched[t].detach(), single, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        # the update did act
        assert abs(float(batched[0].detach()) - float(_hand_loss(model, phi, _qa(tok)[0]))) > 1e-6


def test_first_order_differs_from_second_order(setup):
    model, tok, phi = setup
    alpha = regrad.StepSizes(phi, "tie", 1.0).double()
    losses, grads = [], []
    for first_order in (False, True):
        loss = regrad.meta_losses(model, phi, alpha, _tasks(tok), first_order=first_order).mean()
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, list(phi.values())))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)   # same value: only the gradient differs
    assert max((a - b).abs().max().item() for a, b in zip(*grads)) > 1e-8


def test_outer_loss_false_is_the_mean_passage_lm_loss_at_phi(setup):
    """The ablation (public Meta.py's outer_loss branch): no inner step, alpha gets no gradient."""
    model, tok, phi = setup
    alpha = regrad.StepSizes(phi, "tie", 1e-2).double()
    tasks = _tasks(tok)
    got = regrad.passage_losses(model, phi, tasks)
    for t, rows in enumerate(([0, 1], [2, 3])):
        with torch.no_grad():
            each = [_hand_loss(model, phi, _example(tok, PASSAGES[i])) for i in rows]
        torch.testing.assert_close(got[t].detach(), sum(each) / 2, rtol=1e-10, atol=1e-12)
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.values())
    assert all(p.grad is None for p in alpha.parameters())


def test_gradients_are_taken_outside_autocast(setup, monkeypatch):
    """Autocast wraps forward passes only (PyTorch's guidance); autograd.grad runs outside it."""
    model, tok, phi = setup
    model, phi = model.float(), {n: p.detach().float().requires_grad_(True) for n, p in phi.items()}
    alpha = regrad.StepSizes(phi, "tie", 1e-2)
    calls = []
    real_grad = torch.autograd.grad

    def spy(*args, **kwargs):
        calls.append(torch.is_autocast_enabled("cpu"))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    regrad.meta_losses(model, phi, alpha, _tasks(tok), precision="bf16")
    regrad.per_passage_gradients(model, phi, _passages(tok, PASSAGES), precision="bf16")
    assert calls and not any(calls)


def test_bf16_meta_gradients_agree_with_fp32(setup):
    """bf16 autocast (CPU here; the same code runs on a GPU) against fp32: meta loss within 1%, meta-gradient
    cosine > 0.99. The tolerance is bf16's 8-bit mantissa accumulated over a second-order pass."""
    model, tok, phi = setup
    model = model.float()
    out = {}
    for precision in ("no", "bf16"):
        leaves = {n: p.detach().float().requires_grad_(True) for n, p in phi.items()}
        alpha = regrad.StepSizes(leaves, "tie", 1.0)
        loss = regrad.meta_losses(model, leaves, alpha, _tasks(tok), precision=precision).mean()
        grads = torch.autograd.grad(loss, [*leaves.values(), *alpha.parameters()])
        out[precision] = (loss.item(), torch.cat([g.flatten() for g in grads]))
    (l32, g32), (l16, g16) = out["no"], out["bf16"]
    assert abs(l16 - l32) / l32 < 1e-2
    assert l16 != l32 and not torch.equal(g16, g32)      # bf16 did run: the autocast is not a no-op
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_meta_gradients_agree_with_fp32_on_gpu(setup):
    model, tok, phi = setup
    model = model.float().cuda()
    out = {}
    for precision in ("no", "bf16"):
        leaves = {n: p.detach().float().cuda().requires_grad_(True) for n, p in phi.items()}
        alpha = regrad.StepSizes(leaves, "tie", 1.0)
        loss = regrad.meta_losses(model, leaves, alpha, _tasks(tok).to("cuda"), precision=precision).mean()
        grads = torch.autograd.grad(loss, [*leaves.values(), *alpha.parameters()])
        out[precision] = (loss.item(), torch.cat([g.flatten() for g in grads]))
    (l32, g32), (l16, g16) = out["no"], out["bf16"]
    assert abs(l16 - l32) / l32 < 1e-2
    assert l16 != l32 and not torch.equal(g16, g32)      # bf16 did run: the autocast is not a no-op
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_autocast_runs_matmuls_in_bf16_and_no_is_fp32():
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    with regrad.autocast("cpu", "bf16"):
        assert torch.nn.functional.linear(x, w).dtype == torch.bfloat16
    with regrad.autocast("cpu", "no"):
        assert torch.nn.functional.linear(x, w).dtype == torch.float32
    with pytest.raises(ValueError, match="choose 'bf16' or 'no'"):
        regrad.autocast("cpu", "fp16")
