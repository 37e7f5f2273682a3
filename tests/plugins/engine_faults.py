"""A task and a recipe for the engine's fault tests, loaded on workers through
Experiment.plugins. Both are cheap, so a test's time goes to the faults, not to models.

`tiny_score` scores a model by the mean magnitude of its parameters (a number that is
the same for the same model, nothing more). `paced` reports `epochs` records, each after
`epoch_seconds` of cooperative work and each with a small artifact, so that every report
writes a checkpoint. At `hang_at_epoch` it calls the C library's sleep() for
`hang_seconds`: native code that ignores cancellation and holds its thread, as a
deadlocked BLAS call or a session that never returns would.
"""
import ctypes
import json
import time
from dataclasses import dataclass

from sweeper.config import check_float, check_int
from sweeper.jobs import Quantized
from sweeper.registry import RECIPES, TASKS


@dataclass(frozen=True)
class TinyScore:
    metric = "tiny_score"
    mode = "min"


def tiny_score(model, config: TinyScore, ctx) -> dict:
    """Returns {"tiny_score": mean |parameter| over the model's parameter tensors}."""
    import torch

    with torch.no_grad():
        values = [p.float().abs().mean().item() for p in model.parameters()]
    return {"tiny_score": sum(values) / len(values)}


TASKS.register("tiny_score", tiny_score)(TinyScore)


@dataclass(frozen=True)
class PacedConfig:
    epochs: int = 2
    epoch_seconds: float = 0.2
    hang_at_epoch: int = -1  # -1: never
    hang_seconds: int = 600
    index: int = 0  # tells the trials of a grid apart; the job does not read it

    def __post_init__(self):
        check_int("recipe paced", "epochs", self.epochs, 1, 100)
        check_float("recipe paced", "epoch_seconds", self.epoch_seconds, 0, 600)
        check_int("recipe paced", "hang_at_epoch", self.hang_at_epoch, -1, 100)
        check_int("recipe paced", "hang_seconds", self.hang_seconds, 0, 3600)
        check_int("recipe paced", "index", self.index, 0, 10_000)


def paced(model, config: PacedConfig, ctx) -> Quantized:
    """Returns Quantized(model, reported=True) after `epochs` reports of the task's metrics."""
    for epoch in range(1, config.epochs + 1):
        deadline = time.monotonic() + config.epoch_seconds
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.02)
        if epoch == config.hang_at_epoch:
            ctypes.CDLL(None).sleep(config.hang_seconds)
        ctx.report({**ctx.evaluate(model), "epoch": epoch}, {"epoch.json": json.dumps({"epoch": epoch}).encode()})
    return Quantized(model=model, reported=True)


RECIPES.register("paced", paced)(PacedConfig)
