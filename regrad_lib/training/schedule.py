"""03_train's optimizer and learning-rate schedule: AdamW over ``phi`` and the step sizes ``alpha`` (each its own
group and peak rate), the public code's warm-up then linear or cosine decay, and the clipped step."""

from __future__ import annotations

import math

import torch

from regrad_lib import config


def learning_rate(step: int, args: config.TrainArgs, total_steps: int, base: float | None = None) -> float:
    """The lr of optimizer step ``step`` (0-based), as torch's SequentialLR of the public code computes it:
    LinearLR from ``warmup_start_factor`` over ``int(warmup_ratio * total_steps)`` steps, then a linear decay
    to 0 or a cosine decay to ``eta_min`` over the remaining steps. ``base``: the peak lr (default
    ``learning_rate``; the step sizes' group passes ``alpha_learning_rate``)."""
    warmup = int(args.warmup_ratio * total_steps)
    base = args.learning_rate if base is None else base
    if step < warmup:
        return base * (args.warmup_start_factor + (1.0 - args.warmup_start_factor) * step / warmup)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if args.lr_scheduler_type == "linear":
        return base * (1.0 - progress)
    return args.eta_min + (base - args.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(n_train: int, args: config.TrainArgs) -> tuple[int, int]:
    """(optimizer steps in all, steps per epoch); the last meta batch of an epoch may be smaller."""
    per_epoch = math.ceil(n_train / args.meta_batch_size)
    return (args.max_steps or per_epoch * args.num_train_epochs), per_epoch


def make_optimizer(learner) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """AdamW over two groups: the LoRA weights phi (``learning_rate``) and the learned step sizes alpha
    (``alpha_learning_rate``, default the same); returns it and the list of all its parameters (for clipping)."""
    args = learner.preset.train
    phi = list(learner.phi.values())
    alpha = [p for p in learner.alpha.parameters() if p.requires_grad]
    groups = [{"params": phi, "name": "phi"}] + ([{"params": alpha, "name": "alpha"}] if alpha else [])
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, weight_decay=args.weight_decay)
    return optimizer, phi + alpha


def group_rates(step: int, args: config.TrainArgs, total_steps: int) -> dict[str, float]:
    """The lr of each parameter group at ``step``: the same schedule, each group from its own peak."""
    alpha_base = args.learning_rate if args.alpha_learning_rate is None else args.alpha_learning_rate
    return {"phi": learning_rate(step, args, total_steps), "alpha": learning_rate(step, args, total_steps, alpha_base)}


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_grad_norm: float,
                   lr: float | dict[str, float]) -> float:
    """Clip the accumulated gradient over phi + alpha and step at ``lr`` (one value, or one per group name);
    returns the norm before clipping. A non-finite norm is returned without stepping (the weights stay)."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if math.isfinite(grad_norm):
        for group in optimizer.param_groups:
            group["lr"] = lr[group.get("name", "phi")] if isinstance(lr, dict) else lr
        optimizer.step()
    return grad_norm
