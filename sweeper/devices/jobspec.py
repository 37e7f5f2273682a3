"""The job a trial sends to a device worker."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobSpec:
    """One unit of work on a worker: quantize `model` with a recipe (or not, for the
    FP32 baseline) and evaluate it with a task.

    recipe/task are registered names; their kwargs build the config dataclasses on the
    worker (after importing `plugins`). trial_id ties the job to a Tune trial so a stopped trial's job is cancelled.
    """

    model: str
    task: str
    task_kwargs: dict
    recipe: str | None = None
    recipe_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    trial_id: str = ""
    trust_remote_code: bool = False
    plugins: tuple = ()  # user modules / .py files that register recipes or tasks
    model_format: str = "torch"  # "onnx"/"tf": the worker exports the model (ONNX graph, TF SavedModel) and the job works on that
    onnx_opset: int = 18
