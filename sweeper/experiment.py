"""An experiment: model + recipe search space + task + device kind + objective + scheduler.

Everything here is checked by `Experiment.validate()` before any Ray work starts; a bad
value gets one line naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import check_bool, check_choice, check_float, check_int
from .errors import ConfigError

SCHEDULERS = ("asha", "fifo")
WORKERS_PER_DEVICE_AUTO = "auto"  # chosen by measurement before the sweep (sweeper/packing.py)


@dataclass
class Experiment:
    """A sweep. `search_space` maps recipe config fields to Ray Tune domains or plain
    values; `fixed` holds recipe fields that every trial shares; `trials` lists recipe
    configurations run as they are, before `num_samples` samples of the search space."""

    name: str
    model: str
    recipe: str
    task: Any
    search_space: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)  # fixed trials (Tune's points_to_evaluate)
    # A kind name, a list of kinds, or "all" (every kind the cluster can host; for ONNX
    # recipes, with its execution provider present). Several kinds: each trial names its
    # kind in config["device"], searched like any other key (a grid over them by default).
    device: str | list = "cpu"
    kinds: list = field(default_factory=list)  # extra DeviceKinds (or dicts) for this sweep
    kinds_file: str | None = None  # a YAML/JSON file of extra device kinds
    workers: int | None = None  # None: as many as the cluster holds for the kind
    # Workers sharing one GPU (kinds that hold a GPU: each worker holds 1/N of it, as Ray
    # fractional GPUs); small trials leave most of a large GPU idle otherwise. "auto":
    # measured on the first trial before the sweep (sweeper/packing.py).
    workers_per_device: int | str = 1
    num_samples: int = 4
    # "random" (Tune's variant generator: grids and random draws) or "optuna" (TPE over
    # every objective: multi-objective when there are several; sweeper/searchers.py)
    searcher: str = "random"
    scheduler: str = "asha"
    grace_period: int = 1  # ASHA: reports before a trial can be stopped
    max_failures: int = 2  # retries of a trial whose worker was lost
    seed: int = 0
    # Runs of every configuration, each with its own seed (`repeat_seeds`): the summary and
    # the leaderboard then show mean ± std per configuration and mark ties within the noise.
    # Above 1, a sample's random values are drawn once for all of its grid variants.
    seeds: int = 1
    wandb_project: str = "sweeper"
    trust_remote_code: bool = False
    plugins: tuple = ()  # modules or .py files registering user recipes/tasks, imported on workers too
    metric: str | None = None  # default: the task's metric
    mode: str | None = None  # default: the task's mode
    onnx_opset: int = 18  # for recipes that work on an ONNX export of the model
    # Seconds one trial's job may run before its worker process is killed and the trial
    # ends (or is retried) with "timed out". None: derived from the task, see job_time_limit_s.
    job_timeout_s: float | None = None
    # Seconds without a trial's poll before its job is cancelled (the trial is gone); also
    # how long a cancelled job may take to stop before its worker is killed.
    heartbeat_timeout_s: float = 30.0
    # How the sweep was started (record.run_origin: experiment file, CLI overrides, git
    # commit); set by the CLI, kept in the summary and every trial's record for `sweeper rerun`.
    origin: dict = field(default_factory=dict)
    # Stop every trial after this many reports (Tune's training_iteration); None: when its
    # job ends. `sweeper rerun` sets it to the original's count, so a trial the scheduler
    # stopped early is rerun up to the same point, not to its last epoch.
    stop_after_reports: int | None = None
    # Checkpoints (a report's artifacts: encodings, graphs) Tune keeps per trial while the
    # sweep runs; only the latest matters. None: all, and each trial's latest alone is kept
    # once the sweep ends. Measured on 2 H100s with 2.6 s trials, keeping all made the sweep
    # slower (24 trials: 98.8 s against 74.0 s with 1), though 1 makes Tune snapshot the
    # experiment state at every report (docs/benchmarks.md).
    checkpoints_to_keep: int | None = 1
    # What the user asks beyond the sweep's metric (sweeper/objectives.py): several
    # objectives, ("metric", "min"|"max") pairs or "metric:min" strings, the first one the
    # pick's ([]: the sweep's metric alone); constraints a trial must meet to be feasible,
    # e.g. "wikitext2_ppl <= 1.01 * fp32" or "latency_ms < 50".
    objectives: list = field(default_factory=list)
    constraints: list = field(default_factory=list)
    # Exit policy, whichever comes first: "first_feasible" (the first trial meeting every
    # constraint), time_budget_s seconds of sweep, max_trials ended trials. Running jobs are
    # cancelled, finished results kept; the summary says why the sweep stopped.
    stop: str | None = None
    time_budget_s: float | None = None
    max_trials: int | None = None
    # A per-layer sensitivity stage before the search (sweeper/sensitivity.py): recipe fields
    # over `fixed` quantizing one layer at a time, e.g. {"algorithm": "gptq", "bits": 2,
    # "block_size": 32}; every trial then gets its ranking as `sensitivity_ranking`. None: no
    # stage. sensitivity_task: what it measures (None: the sweep's task; a shorter one of
    # the same kind saves time). sensitivity_views: "alone" (that layer quantized, the rest in
    # float) and/or "all_but" (every layer but that one).
    sensitivity: dict | None = None
    sensitivity_task: Any = None
    sensitivity_views: tuple = ("alone",)

    @property
    def max_reports(self) -> int:
        """Returns the most reports (Tune iterations) one trial can make: its largest
        `epochs` plus the epoch-0 report (encodings initialised, before training)."""
        from ray.tune.search import sample

        epochs = self.search_space.get("epochs", self.fixed.get("epochs", 1))
        if isinstance(epochs, dict) and "grid_search" in epochs:
            top = max(epochs["grid_search"])
        elif isinstance(epochs, sample.Categorical):
            top = max(epochs.categories)
        elif isinstance(epochs, sample.Integer):
            top = epochs.upper - 1
        else:
            top = int(epochs) if isinstance(epochs, int) else 1
        return top + 1

    @property
    def job_time_limit_s(self) -> float:
        """Returns one job's time limit in seconds: job_timeout_s, else 900 s to load, export
        and quantize plus, per report, two of the task's evaluations (one for the epoch's
        training, one for the evaluation itself), each what the task's `eval_budget_s()`
        allows (3600 s for a task that does not say)."""
        if self.job_timeout_s is not None:
            return float(self.job_timeout_s)
        return 900.0 + 2 * self.max_reports * self._eval_budget_s()

    @property
    def baseline_time_limit_s(self) -> float:
        """Returns the FP32 baseline job's time limit in seconds: what the task allows for a
        job of one report (see job_time_limit_s), or job_time_limit_s if that is longer.
        The baseline is each sweep's first job, model load included, and is not retried."""
        return max(self.job_time_limit_s, 900.0 + 2 * self._eval_budget_s())

    def _eval_budget_s(self) -> float:
        budget = getattr(self.task, "eval_budget_s", None)
        return float(budget()) if callable(budget) else 3600.0

    @property
    def device_names(self) -> list[str]:
        """Returns the kinds asked for: ["all"] or the listed kind names."""
        return [self.device] if isinstance(self.device, str) else list(self.device)

    def extra_kinds(self) -> dict:
        """Returns {name: DeviceKind} of the kinds this experiment brings (file and list)."""
        from .devices.kinds import DeviceKind, kind_from_dict, load_kinds_file

        out = {}
        for k in load_kinds_file(self.kinds_file) if self.kinds_file else []:
            out[k.name] = k
        for i, k in enumerate(self.kinds):
            k = k if isinstance(k, DeviceKind) else kind_from_dict(k, f"experiment kinds[{i}]")
            out[k.name] = k
        return out

    @property
    def model_format(self) -> str:
        """Returns "onnx" when the recipe works on an ONNX graph, else "torch"."""
        from .registry import RECIPES, ensure_builtin_registered

        ensure_builtin_registered()
        return getattr(RECIPES.get(self.recipe).config_cls, "model_format", "torch")

    @property
    def seed_in_recipe(self) -> bool:
        """Returns whether the recipe's config has a `seed` field (its calibration choice,
        data order and init follow it)."""
        from .registry import RECIPES, ensure_builtin_registered

        ensure_builtin_registered()
        return "seed" in {f.name for f in dataclasses.fields(RECIPES.get(self.recipe).config_cls)}

    def repeat_seeds(self) -> list[int]:
        """Returns the seeds of the `seeds` repeats of every configuration: base, base+1, ...
        where base is the seed a single run would use (fixed["seed"], else the recipe's
        default seed, else the experiment's job seed), so repeat 0 is that single run."""
        from .registry import RECIPES

        if "seed" in self.fixed:
            base = self.fixed["seed"]
        elif self.seed_in_recipe:
            base = next(f.default for f in dataclasses.fields(RECIPES.get(self.recipe).config_cls) if f.name == "seed")
        else:
            base = self.seed
        return [base + i for i in range(self.seeds)]

    def trial_task_fields(self) -> list[str]:
        """Returns the task fields that the search space or the fixed trials set per trial
        (e.g. GLUE's `task`), in the task config's field order. A name that is also a field
        of the recipe (batch_size, seed) stays the recipe's."""
        from .registry import RECIPES, ensure_builtin_registered

        ensure_builtin_registered()
        recipe = {f.name for f in dataclasses.fields(RECIPES.get(self.recipe).config_cls)}
        keys = set(self.search_space) | {k for t in self.trials if isinstance(t, dict) for k in t}
        return [f.name for f in dataclasses.fields(self.task) if f.name in keys and f.name not in recipe]

    @property
    def objective(self) -> tuple[str, str]:
        """Returns (metric name, "min" | "max")."""
        return self.metric or self.task.metric, self.mode or self.task.mode

    def goals(self) -> tuple[list, list]:
        """Returns (objectives, constraints) parsed (objectives.Objective, .Constraint); the
        objectives default to the sweep's own (metric, mode)."""
        from .objectives import Objective, parse_constraint, parse_objective

        objectives = [parse_objective(o) for o in self.objectives] or [Objective(*self.objective)]
        return objectives, [parse_constraint(c) for c in self.constraints]

    def known_metrics(self) -> set[str] | None:
        """Returns the metric keys this sweep's trials report (the task's for the model's
        format, plus the recipe's own), or None when the task does not say."""
        from .registry import RECIPES

        reported = getattr(self.task, "reported_metrics", None)
        if reported is None:
            return None
        keys = set(reported(self.model_format))
        extra = getattr(RECIPES.get(self.recipe).config_cls, "reported_metrics", None) if self.recipe else None
        return keys | set(extra(keys)) if callable(extra) else keys

    def validate(self) -> "Experiment":
        """Checks every field; returns self or raises ConfigError (one line)."""
        from .registry import RECIPES, TASKS, ensure_builtin_registered, import_plugin

        ensure_builtin_registered()
        w = "experiment"
        if not isinstance(self.plugins, (tuple, list)) or not all(isinstance(p, str) for p in self.plugins):
            raise ConfigError(w, "plugins", self.plugins, "a list of module names or .py file paths")
        for plugin in self.plugins:
            import_plugin(plugin)
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", self.name):
            raise ConfigError(w, "name", self.name, "1-100 letters, digits, '_', '.', '-'")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(w, "model", self.model, "a Hugging Face id, a local path or a reference model name")
        if self.model.startswith((".", "/", "~")) and not Path(self.model).expanduser().exists():
            raise ConfigError(w, "model", self.model, "an existing local path (this one does not exist)")
        from .models.loading import check_model_available

        check_model_available(self.model)
        entry = RECIPES.get(self.recipe)
        TASKS.for_config(self.task)
        if not isinstance(self.search_space, dict):
            raise ConfigError(w, "search_space", type(self.search_space).__name__, "a dict of field -> domain")
        validate_devices(self)
        wpd = self.workers_per_device
        if wpd != WORKERS_PER_DEVICE_AUTO and (isinstance(wpd, bool) or not isinstance(wpd, int) or not 1 <= wpd <= 64):
            raise ConfigError(w, "workers_per_device", wpd, "an integer in 1..64, or 'auto' (measured on the first trial)")
        if self.workers is not None:
            check_int(w, "workers", self.workers, 1, 4096)
        check_int(w, "num_samples", self.num_samples, 0 if self.trials else 1, 100_000)
        if self.stop_after_reports is not None:
            check_int(w, "stop_after_reports", self.stop_after_reports, 1, 1 << 30)
        if self.checkpoints_to_keep is not None:
            check_int(w, "checkpoints_to_keep", self.checkpoints_to_keep, 1, 1 << 30)
        # torch's exporter writes opset 18; converting GPT-2/OPT graphs down fails or yields an
        # invalid Split (onnx 1.23), so lower opsets are refused here rather than at export.
        check_int(w, "onnx_opset", self.onnx_opset, 18, 30)
        check_choice(w, "scheduler", self.scheduler, SCHEDULERS)
        check_int(w, "grace_period", self.grace_period, 1, 10_000)
        check_int(w, "max_failures", self.max_failures, 0, 100)
        check_int(w, "seed", self.seed, 0, 2**31 - 1)
        check_int(w, "seeds", self.seeds, 1, 1000)
        if self.job_timeout_s is not None:
            check_float(w, "job_timeout_s", self.job_timeout_s, 0, 7 * 86400, lo_open=True)
        check_float(w, "heartbeat_timeout_s", self.heartbeat_timeout_s, 0.5, 3600)
        if self.seeds > 1 and ("seed" in self.search_space or any(isinstance(t, dict) and "seed" in t for t in list(self.trials or []))):
            raise ConfigError(w, "seeds", self.seeds, "1 when search_space or trials set 'seed' (the repeats set it)")
        check_bool(w, "trust_remote_code", self.trust_remote_code)
        metric, mode = self.objective
        check_choice(w, "mode", mode, ("min", "max"))
        if metric != self.task.metric:
            raise ConfigError(w, "metric", metric, f"{self.task.metric!r} (what task {type(self.task).__name__} reports)")
        validate_goals(self)
        validate_sensitivity(self)
        job_keys = ("device", "model", "recipe", *self.trial_task_fields())
        space = {k: v for k, v in self.search_space.items() if k not in job_keys}
        fixed = self.fixed
        if self.sensitivity is not None:  # its ranking comes later; its length is the model's
            from .sensitivity import RANKING_FIELD

            fixed = {**fixed, RANKING_FIELD: [f"layer {i}" for i in range(1 << 12)]}
        validate_space(entry.config_cls, space, fixed)
        from .searchers import SEARCHERS, check_searcher

        check_choice(w, "searcher", self.searcher, SEARCHERS)
        check_searcher(self, space)
        validate_trials(entry.config_cls, [{k: v for k, v in t.items() if k not in job_keys}
                                           if isinstance(t, dict) and t.get("recipe", self.recipe) else {}
                                           for t in self.trials], fixed)
        tasks = validate_job_keys(self)
        if self.seeds > 1 and self.seed_in_recipe:  # the last repeat's seed must suit the recipe too
            entry.config_cls(**{**self.fixed, "seed": self.repeat_seeds()[-1]})
        for task in tasks:
            check_data = getattr(task, "check_data", None)
            if check_data:
                check_data()
        return self


def validate_job_keys(exp: Experiment) -> list:
    """Checks the per-trial values of "recipe" (the experiment's recipe, or None for the FP32
    model), "model" (loadable here) and of task fields (each builds a valid task config);
    returns the task configs the trials run (the experiment's task first). Raises ConfigError."""
    from .models.loading import check_model_available

    def values(key):
        out = list(_domain_values(key, exp.search_space[key])) if key in exp.search_space else []
        return out + [t[key] for t in exp.trials if isinstance(t, dict) and key in t]

    for v in values("recipe"):
        if v not in (exp.recipe, None):
            raise ConfigError("search_space", "recipe", v, f"{exp.recipe!r} or None (the FP32 model)")
    for v in values("model"):
        if not isinstance(v, str) or not v.strip():
            raise ConfigError("search_space", "model", v, "a Hugging Face id, a local path or a reference model name")
        check_model_available(v)
    tasks = [exp.task]
    for key in exp.trial_task_fields():
        for v in values(key):
            t = dataclasses.replace(exp.task, **{key: v})
            if t not in tasks:
                tasks.append(t)
    return tasks


def validate_goals(self: Experiment) -> None:
    """Checks objectives, constraints and the exit policy; raises ConfigError (one line)."""
    from .objectives import check_against

    for name in ("objectives", "constraints"):
        if not isinstance(getattr(self, name), (list, tuple)):
            raise ConfigError("experiment", name, getattr(self, name), "a list")
    objectives, constraints = self.goals()
    check_against(objectives, constraints, self.known_metrics())
    if self.stop is not None:
        check_choice("experiment", "stop", self.stop, ("first_feasible",))
        if not constraints:
            raise ConfigError("experiment", "stop", self.stop, "constraints to be feasible against (none given)")
    if self.time_budget_s is not None:
        check_float("experiment", "time_budget_s", self.time_budget_s, 0, 365 * 86400, lo_open=True)
    if self.max_trials is not None:
        check_int("experiment", "max_trials", self.max_trials, 1, 1 << 30)


def validate_sensitivity(self: Experiment) -> None:
    """Checks the sensitivity stage's fields; raises ConfigError (one line)."""
    from .registry import RECIPES
    from .sensitivity import LAYER_FIELDS, VIEWS, LayerJob, probe_kwargs

    w = "experiment"
    if self.sensitivity is None:
        if self.sensitivity_task is not None:
            raise ConfigError(w, "sensitivity_task", type(self.sensitivity_task).__name__,
                              "None without a sensitivity stage (set sensitivity={...} recipe fields)")
        return
    if not isinstance(self.sensitivity, dict):
        raise ConfigError(w, "sensitivity", self.sensitivity, "a dict of recipe fields (or None: no stage)")
    config_cls = RECIPES.get(self.recipe).config_cls
    names = {f.name for f in dataclasses.fields(config_cls)}
    if not set(LAYER_FIELDS) <= names:
        raise ConfigError(w, "sensitivity", self.sensitivity, f"a recipe with per-layer fields {', '.join(LAYER_FIELDS)} "
                          f"(recipe {self.recipe} has none)")
    for key in LAYER_FIELDS:
        if key in self.sensitivity or key in self.fixed or key in self.search_space:
            raise ConfigError(w, key, "set", f"unset: the sensitivity stage sets {key} itself")
    if not isinstance(self.sensitivity_views, (list, tuple)) or not self.sensitivity_views or \
            any(v not in VIEWS for v in self.sensitivity_views) or len(set(self.sensitivity_views)) != len(self.sensitivity_views):
        raise ConfigError(w, "sensitivity_views", self.sensitivity_views, f"a non-empty list of {', '.join(VIEWS)}")
    self.sensitivity_views = tuple(self.sensitivity_views)
    try:
        for view in ("list", "alone", "all_but"):
            config_cls(**LayerJob(view, "x").recipe_kwargs(probe_kwargs(self)))
    except ConfigError as exc:
        raise ConfigError(w, "sensitivity", self.sensitivity, f"recipe fields that quantize one layer ({exc})") from None
    if self.sensitivity_task is not None:
        if type(self.sensitivity_task) is not type(self.task):
            raise ConfigError(w, "sensitivity_task", type(self.sensitivity_task).__name__,
                              f"a {type(self.task).__name__} like the sweep's task (or None)")
        if self.sensitivity_task.metric != self.objective[0]:
            raise ConfigError(w, "sensitivity_task", self.sensitivity_task.metric, f"a task reporting {self.objective[0]}")


def validate_devices(self: Experiment) -> None:
    """Registers the experiment's own kinds and checks the device names and any searched
    "device" values against the known kinds; raises ConfigError (one line)."""
    from .devices.kinds import KINDS, get_kind, register_kind

    for kind in self.extra_kinds().values():
        register_kind(kind)
    names = self.device_names
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("experiment", "device", self.device, "a kind name, a list of kind names or 'all'")
    if names != ["all"]:
        for n in names:
            get_kind(n)
    if self.workers_per_device != 1 and names != ["all"] and not any(get_kind(n).resources.get("GPU", 0) > 0 for n in names):
        raise ConfigError("experiment", "workers_per_device", self.workers_per_device,
                          f"1 for kinds that hold no GPU (kinds {', '.join(names)}; a CPU kind's workers are "
                          "already one per core)")
    allowed = sorted(KINDS) if names == ["all"] else names
    searched = list(_domain_values("device", self.search_space["device"])) if "device" in self.search_space else []
    searched += [t["device"] for t in self.trials if isinstance(t, dict) and "device" in t]
    for n in searched:
        if n not in allowed:
            raise ConfigError("search_space", "device", n, f"one of the experiment's kinds: {', '.join(allowed)}")


def _domain_values(name: str, domain) -> list:
    """Returns the values of a search-space entry worth constructing a config with."""
    from ray.tune.search import sample

    if isinstance(domain, dict) and set(domain) == {"grid_search"}:
        values = domain["grid_search"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError("search_space", name, values, "a non-empty list for grid_search")
        return list(values)
    if isinstance(domain, sample.Categorical):
        return list(domain.categories)
    if isinstance(domain, sample.Integer):
        return [domain.lower, domain.upper - 1]  # randint's upper bound is exclusive
    if isinstance(domain, sample.Float):
        if domain.lower >= domain.upper:
            raise ConfigError("search_space", name, (domain.lower, domain.upper), "lower < upper")
        return [domain.lower, domain.upper]
    if isinstance(domain, sample.Domain):
        return []  # sample_from: only its samples can be checked, when they are drawn
    return [domain]


def validate_space(config_cls, space: dict, fixed: dict, max_combinations: int = 20_000) -> None:
    """Raises ConfigError unless every key is a field of `config_cls` and every combination
    of the domains' values (grid values, categories, range bounds) builds a valid config,
    so a combination the recipe refuses is caught before any trial runs. Beyond
    `max_combinations`, each value is checked with the other keys at their first value."""
    import itertools

    if not isinstance(space, dict):
        raise ConfigError("experiment", "search_space", type(space).__name__, "a dict of field -> domain")
    names = [f.name for f in dataclasses.fields(config_cls)]
    for key in list(space) + list(fixed):
        if key not in names:
            raise ConfigError(f"search_space of {config_cls.registered_name}", key, "(field)", ", ".join(names))
    config_cls(**fixed)
    values = {k: v for k, v in ((k, _domain_values(k, d)) for k, d in space.items()) if v}
    count = 1
    for v in values.values():
        count *= len(v)
    if count <= max_combinations:
        for combo in itertools.product(*values.values()):
            config_cls(**{**fixed, **dict(zip(values, combo))})
        return
    first = {k: v[0] for k, v in values.items()}
    for key, vals in values.items():
        for value in vals:
            config_cls(**{**fixed, **first, key: value})


def validate_trials(config_cls, trials, fixed: dict) -> None:
    """Raises ConfigError unless every fixed trial is a dict of `config_cls` fields that,
    over `fixed`, builds a valid config."""
    if not isinstance(trials, (list, tuple)):
        raise ConfigError("experiment", "trials", type(trials).__name__, "a list of dicts of recipe fields")
    names = [f.name for f in dataclasses.fields(config_cls)]
    for i, trial in enumerate(trials):
        if not isinstance(trial, dict):
            raise ConfigError("experiment", f"trials[{i}]", trial, "a dict of recipe fields")
        for key in trial:
            if key not in names:
                raise ConfigError(f"trials[{i}] of {config_cls.registered_name}", key, "(field)", ", ".join(names))
        config_cls(**{**fixed, **trial})
