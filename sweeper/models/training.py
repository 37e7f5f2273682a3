"""The optimizer loop shared by the zoo's classifier fine-tunes and the QAT recipe: AdamW
with an optional linear warm-up/decay schedule, and one epoch of steps on a loss."""
from __future__ import annotations

from typing import Callable, Iterable


def linear_schedule(steps: int, warmup_frac: float):
    """Returns f(step) -> lr factor: linear warm-up over `warmup_frac` of `steps` (at least
    one step), then linear decay to 0 at `steps`."""
    warm = max(1, int(round(warmup_frac * steps)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))  # linear decay, as BERT/RoBERTa fine-tuning

    return f


def adamw_with_schedule(model, *, lr: float, weight_decay: float, total_steps: int, warmup_frac: float):
    """Returns (AdamW over `model`'s trainable parameters, its LambdaLR linear_schedule over
    `total_steps` steps, or None when `warmup_frac` is 0: a constant learning rate)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if warmup_frac <= 0:
        return opt, None
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(max(1, total_steps), warmup_frac))


def train_epoch(batches: Iterable, loss_of: Callable, opt, sched, *, epoch: int, where: str,
                check_cancelled: Callable[[], None] = lambda: None) -> float:
    """Takes one optimizer (and scheduler) step per batch of `batches`, on the scalar loss
    tensor `loss_of(batch)` returns; returns the epoch's mean training loss (0.0 for no
    batch). Raises FloatingPointError naming `where`, the epoch and the step on a loss that
    is not finite."""
    import torch

    total, count = 0.0, 0
    for step, batch in enumerate(batches, 1):
        check_cancelled()
        loss = loss_of(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{where}: training loss is {loss.item()} at epoch {epoch} step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.item()
        count += 1
    return total / max(1, count)
