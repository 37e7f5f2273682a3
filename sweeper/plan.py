"""What every trial of a sweep needs to build and bound its job, fixed before any starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .devices.jobspec import JobSpec
from .devices.liveness import Liveness
from .noise import SEED_KEY


@dataclass(frozen=True)
class SweepPlan:
    """A sweep as its trials see it: the model, task and recipe by registered name with their
    fixed settings, the default device kind, the objective's metric, the pool's namespace,
    the jobs' time limits (s) and the engine's liveness bounds."""

    namespace: str
    model: str
    task: str
    task_kwargs: dict
    recipe: str
    fixed: dict
    seed: int
    device: str  # the kind a trial runs on unless its config names one
    metric: str
    trust_remote_code: bool
    model_format: str
    onnx_opset: int
    seed_in_recipe: bool  # a repeat's "seed" is a recipe field (else it only seeds the job)
    plugins: tuple
    task_fields: tuple  # task fields a trial's config may set (e.g. GLUE's "task")
    job_timeout_s: float  # a trial's job
    baseline_timeout_s: float  # the FP32 baseline's job
    liveness: Liveness

    @classmethod
    def of(cls, exp, namespace: str, device: str) -> "SweepPlan":
        """Returns the plan of validated Experiment `exp` whose pool lives in `namespace`,
        its trials defaulting to kind `device`."""
        from .config import to_dict

        return cls(namespace=namespace, model=exp.model, task=type(exp.task).registered_name,
                   task_kwargs={k: v for k, v in to_dict(exp.task).items() if k != "name"}, recipe=exp.recipe,
                   fixed=dict(exp.fixed), seed=exp.seed, device=device, metric=exp.objective[0],
                   trust_remote_code=exp.trust_remote_code, model_format=exp.model_format,
                   onnx_opset=exp.onnx_opset, seed_in_recipe=exp.seed_in_recipe,
                   # absolute paths: workers may not share the driver's working directory
                   plugins=tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in exp.plugins),
                   task_fields=tuple(exp.trial_task_fields()),
                   job_timeout_s=exp.job_time_limit_s, baseline_timeout_s=exp.baseline_time_limit_s,
                   liveness=Liveness(heartbeat_timeout_s=exp.heartbeat_timeout_s))

    def job_spec(self, recipe_kwargs: dict | None, trial_id: str = "", seed: int | None = None,
                 model: str | None = None, task_kwargs: dict | None = None) -> JobSpec:
        """Returns the JobSpec of one job of the plan (recipe_kwargs None: the FP32 baseline),
        seeded with `seed` (None: the plan's seed), on `model` (None: the plan's), with the
        plan's task fields updated by `task_kwargs`."""
        return JobSpec(model=model or self.model, task=self.task, task_kwargs={**self.task_kwargs, **(task_kwargs or {})},
                       recipe=self.recipe if recipe_kwargs is not None else None, recipe_kwargs=recipe_kwargs or {},
                       seed=self.seed if seed is None else seed, trial_id=trial_id,
                       trust_remote_code=self.trust_remote_code, plugins=self.plugins,
                       model_format=self.model_format, onnx_opset=self.onnx_opset)

    def trial_job(self, config: dict, trial_id: str) -> tuple[str, JobSpec]:
        """Returns (device kind, JobSpec) of Tune trial `trial_id` with `config`: the fixed
        recipe fields overlaid with the config's, less the job's own keys: "device", "model",
        "recipe" (None: the FP32 model), the task fields, and "seed" where it is not a recipe
        field (it seeds the job either way)."""
        job_keys = ("device", "model", "recipe", *self.task_fields) + (() if self.seed_in_recipe else (SEED_KEY,))
        kwargs = {**self.fixed, **{k: v for k, v in config.items() if k not in job_keys}}
        spec = self.job_spec(kwargs if config.get("recipe", self.recipe) else None, trial_id, config.get(SEED_KEY),
                             model=config.get("model"),
                             task_kwargs={k: config[k] for k in self.task_fields if k in config})
        return config.get("device") or self.device, spec
