"""Numerical tests of the functional core against one-by-one reference computations."""

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


def _one_by_one(model, phi, tok, items):
    out = []
    for item in items:
        batch = _passages(tok, [item])
        with lora.use(model, phi):
            loss = regrad.token_losses(model, batch).sum()
        out.append(dict(zip(phi, torch.autograd.grad(loss, list(phi.values())))))
    return out


def _max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)).item() for n in b)


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
    assert losses.shape == (len(PASSAGES),)


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
        with torch.no_grad(), lora.use(model, {n: v * (1 + i) for n, v in phi.items()}):
            single = regrad.token_losses(model, _passages(tok, [PASSAGES[i]]))
        torch.testing.assert_close(batched[i], single[0], rtol=1e-10, atol=1e-12)


def _tasks(tok):
    qa = [prompts.qa_example(tok, "What is the capital of France?", "Paris"),
          prompts.qa_example(tok, "Where is Kyoto?", "Japan")]
    return regrad.TaskBatch(_passages(tok, PASSAGES), torch.tensor([0, 0, 1, 1]),
                            regrad.collate(qa, tok.pad_token_id))


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
        g = regrad.summed_gradient(model, phi, _passages(tok, [PASSAGES[i] for i in rows]))
        adapted = regrad.apply_update(phi, g, alpha)
        qa = regrad.TokenBatch(*(x[t:t + 1] for x in (tasks.qa.input_ids, tasks.qa.attention_mask, tasks.qa.labels)))
        with lora.use(model, adapted):
            single = regrad.token_losses(model, qa)
        torch.testing.assert_close(batched[t], single[0], rtol=1e-9, atol=1e-12)


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
        with lora.use(model, phi):
            each = regrad.token_losses(model, _passages(tok, [PASSAGES[i] for i in rows]))
        torch.testing.assert_close(got[t], each.mean(), rtol=1e-12, atol=0)
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
