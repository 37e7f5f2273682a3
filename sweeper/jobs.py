"""What a recipe or task function receives from the device worker that runs it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class JobContext:
    """Everything a recipe or task needs besides the model and its config.

    A worker builds one per job, complete. `cached(key, build)` returns a value kept across
    jobs on the same worker (tokenized data, calibration batches), built once per key.
    `evaluate(model)` runs the job's task: pass `task` (a registered task config) and it is
    that task's function, or pass `evaluate` itself.
    """

    device: Any  # torch.device the job runs on
    tokenizer: Any  # the model's tokenizer (transformers PreTrainedTokenizerBase)
    seed: int = 0
    # report(metrics, artifacts=None): one call = one Tune iteration; artifacts (file name ->
    # bytes, e.g. exported encodings) go with the last report of a job into a checkpoint.
    report: Callable[..., None] = lambda metrics, artifacts=None: None
    check_cancelled: Callable[[], None] = lambda: None  # raises JobCancelled when stopped
    cached: Callable[[Any, Callable[[], Any]], Any] = lambda key, build: build()
    log: Callable[[str], None] = print
    evaluate: Callable[[Any], dict] | None = None  # runs the job's task on a model
    train_text: Any = None  # TextSplit used for calibration / fine-tuning
    kind: Any = None  # the worker's devices.kinds.DeviceKind (ONNX Runtime providers); None: cpu
    workdir: Any = None  # a folder private to this job, removed when it ends (quantized graphs)
    task: Any = None  # the job's task config (a registered task dataclass); builds `evaluate`

    def __post_init__(self):
        if self.evaluate is None and self.task is not None:
            self.evaluate = self._evaluate_task

    def _evaluate_task(self, model) -> dict:
        """Returns the metrics dict of the job's task run on `model`."""
        from .registry import TASKS

        return TASKS.for_config(self.task).fn(model, self.task, self)


@dataclass
class Quantized:
    """What a recipe returns: the model to evaluate, files to keep, and whether the
    recipe already reported its own per-epoch metrics through ctx.report (then it passed
    its artifacts with its last report, and `artifacts` here is informational)."""

    model: Any
    artifacts: dict[str, bytes] = field(default_factory=dict)
    reported: bool = False
    info: dict = field(default_factory=dict)
    # numbers the recipe measured itself (e.g. GPTQ's layer error vs RTN), reported beside
    # the task's metrics when the recipe did not report on its own
    metrics: dict = field(default_factory=dict)
