"""A recipe for fault-injection tests, loaded on workers through Experiment.plugins.

`planted_nan` fine-tunes nothing: each epoch it evaluates the model and reports, and at
`nan_at_epoch` it writes NaN into the LM head first (the planted fault), so that epoch's
perplexity is NaN. `epoch_seconds` keeps a job busy long enough to kill things under it.
"""
import copy
import time
from dataclasses import dataclass

from sweeper.config import check_float, check_int
from sweeper.jobs import Quantized
from sweeper.registry import RECIPES


@dataclass(frozen=True)
class PlantedNaNConfig:
    epochs: int = 2
    nan_at_epoch: int = -1  # -1: never
    epoch_seconds: float = 0.0

    def __post_init__(self):
        check_int("recipe planted_nan", "epochs", self.epochs, 1, 100)
        check_int("recipe planted_nan", "nan_at_epoch", self.nan_at_epoch, -1, 100)
        check_float("recipe planted_nan", "epoch_seconds", self.epoch_seconds, 0, 600)


def planted_nan(model, config: PlantedNaNConfig, ctx) -> Quantized:
    """Returns Quantized(model copy, reported=True) after `epochs` evaluated epochs."""
    import torch

    model = copy.deepcopy(model)
    for epoch in range(1, config.epochs + 1):
        deadline = time.monotonic() + config.epoch_seconds
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.05)
        if epoch == config.nan_at_epoch:
            with torch.no_grad():
                model.get_output_embeddings().weight.fill_(float("nan"))
        ctx.report({**ctx.evaluate(model), "epoch": epoch})
    return Quantized(model=model, reported=True)


RECIPES.register("planted_nan", planted_nan)(PlantedNaNConfig)


@dataclass(frozen=True)
class PlantedOOMConfig:
    batch_size: int = 8
    fits_batch: int = 2  # the largest batch that "fits": a larger one raises CUDA out of memory

    def __post_init__(self):
        check_int("recipe planted_oom", "batch_size", self.batch_size, 1, 1024)
        check_int("recipe planted_oom", "fits_batch", self.fits_batch, 0, 1024)


def planted_oom(model, config: PlantedOOMConfig, ctx) -> Quantized:
    """Raises torch's CUDA OutOfMemoryError when config.batch_size > config.fits_batch (a
    device that is too small, on any machine); else reports its evaluation with the batch
    sizes it ran with and returns the model."""
    import torch

    if config.batch_size > config.fits_batch:
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {config.batch_size} GiB (planted)")
    ctx.report({**ctx.evaluate(model), "trained_batch": config.batch_size, "eval_batch": ctx.task.batch_size, "epoch": 0})
    return Quantized(model=model, reported=True)


RECIPES.register("planted_oom", planted_oom)(PlantedOOMConfig)
