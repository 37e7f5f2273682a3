"""Runs an Experiment with ray.tune.Tuner over a pool of device workers.

`run_experiment` reads top to bottom: start the sweep (Ray, the pool, the plan), measure
the baseline, run the trials (`trial.trial_main`: each leases a worker and relays its
job's metrics to `tune.report`), summarize, write the results. The expensive state
(models, tokenized data) lives on the workers across trials.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .config import is_finite_number as _finite
from .devices.pool import POOL_ACTOR_NAME
from .errors import ConfigError
from .experiment import WORKERS_PER_DEVICE_AUTO as AUTO, Experiment
from .noise import SEED_KEY, aggregate_configurations, has_repeats
from .plan import SweepPlan
from .record import package_versions, trial_record
from .reports.summary_schema import is_metric_key, one_line
from .reports.summary_tables import device_reports, mark_size_front, size_front, summary_table
from .reports.console import LOG_DIR_ENV, QUIET_ENV, QUIET_LIBRARY_ENV, is_quiet, log_file, quiet_console, reattach_ray_logging
from .reports.tracking import wandb_callback
from .trial import run_baseline, trial_main

# Trials only relay metrics, so they hold no CPU a device worker could use: locally Ray is
# started with this custom resource; a cluster offers it on its head node (cluster.yaml).
TRIAL_RESOURCE = "sweeper_trial"
# The folder of the run where each worker appends its jobs' starts and ends (<worker id>.jsonl).
WORKER_JOB_LOGS = "worker_jobs"
LOGS_DIR = "logs"  # quiet runs: workers' log lines, library warnings


@dataclass
class SweepResult:
    """What a finished sweep produced: the summary dict and where files were written."""

    summary: dict
    results_dir: Path
    summary_path: Path | None = None
    table: str = ""
    worker_stats: dict = field(default_factory=dict)
    storage: str = ""  # the experiment folder as a path or URI (results_dir is its local copy)


def _cancel_callback(namespace: str):
    from ray.tune import Callback

    class CancelStoppedTrials(Callback):
        """Frees a trial's worker the moment Tune ends the trial (ASHA stop, error)."""

        def _cancel(self, trial):
            import ray

            try:
                ray.get_actor(POOL_ACTOR_NAME, namespace=namespace).cancel_trial.remote(trial.trial_id)
            except ValueError:
                pass

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("done"):  # the scheduler decided to stop the trial
                self._cancel(trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._cancel(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._cancel(trial)

    return CancelStoppedTrials()


def cluster_env_vars(extra: dict | None = None) -> dict:
    """Returns the environment every Ray worker of the sweep gets, on every node: this
    process's data folder and model cache (when set), its resolved W&B mode and `extra`,
    less what the Ray job's own runtime_env already sets (Ray refuses a key set twice; the
    job's value is this process's value anyway)."""
    from .data.wikitext import pin_data_dirs
    from .reports.tracking import wandb_mode

    pin_data_dirs()  # absolute: other nodes and workers do not share our working directory
    env = {"WANDB_MODE": wandb_mode()}
    for name in ("SWEEPER_DATA_DIR", "SWEEPER_CACHE_DIR", LOG_DIR_ENV):
        if os.environ.get(name):
            env[name] = str(Path(os.environ[name]).expanduser().resolve())
    env.update({name: os.environ[name] for name in (QUIET_ENV, *QUIET_LIBRARY_ENV) if os.environ.get(name)})
    env.update(extra or {})
    from .storage import job_env_vars

    taken = job_env_vars()
    return {k: v for k, v in env.items() if k not in taken}


def init_ray(namespace: str, env: dict | None = None) -> None:
    """Connects to the Ray cluster in RAY_ADDRESS (as under `ray job submit`), or starts a
    local one sized to this machine; either way the workers get `cluster_env_vars(env)`."""
    import ray

    if ray.is_initialized():
        return
    from .devices.kinds import local_cpu_count

    runtime_env = {"env_vars": cluster_env_vars(env)}
    # A quiet sweep: Ray processes' output stays in their log files (the workers' in the
    # sweep's logs folder, Tune's and the pool's in Ray's session logs), and quiet_console
    # has already routed the driver's Ray logging, which ray.init must leave alone.
    loud = not is_quiet()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, log_to_driver=loud,
                 configure_logging=loud, runtime_env=runtime_env)
    else:
        # address="local": always a new local Ray, never one another process left running
        ray.init(address="local", num_cpus=local_cpu_count(), resources={TRIAL_RESOURCE: 10_000}, include_dashboard=False, namespace=namespace,
                 log_to_driver=loud, configure_logging=loud, logging_level="WARNING", runtime_env=runtime_env)
    if not loud:
        reattach_ray_logging()  # ray.init dropped the handler quiet_console set


def prepare_reference_model(model: str, store) -> dict:
    """When `model` is a reference (zoo) model: with shared storage (a URI), builds it here
    once and puts it on the storage, where every node's workers copy it from instead of
    training it again; on a local Ray, builds it here when it is not built yet (the workers
    then find it in the cache), its progress on the console. Returns the workers' env var
    saying where the shared copy is ({} if none)."""
    from .models.zoo import SHARED_ZOO_ENV, build, is_complete, entry_path, publish_shared, zoo_names
    from .reports.progress import ThrottledLines

    name = model[4:] if model.startswith("zoo:") else model
    if name not in zoo_names():
        return {}
    shared = store.shared
    if not shared and is_complete(entry_path(name)):
        return {}
    if not shared and os.environ.get("RAY_ADDRESS"):  # on a cluster each node's workers build it
        print(f"[sweeper] reference model {name}: built by the workers of each node that lacks it (minutes on a "
              f"CPU; progress in their logs{', logs/<worker>.log' if is_quiet() else ''})", flush=True)
        return {}
    progress = ThrottledLines(prefix="[sweeper] ", path=log_file("driver.log"), every_s=60.0 if is_quiet() else 0.0)
    t0 = time.monotonic()
    if shared:
        publish_shared(name, store.zoo_uri, log=progress)
    else:
        build(name, log=progress)
    progress.finish(f"reference model {name} ready ({time.monotonic() - t0:.0f}s)")
    return {SHARED_ZOO_ENV: store.zoo_uri} if shared else {}


def fixed_trial_space(exp: Experiment) -> tuple[dict, list[dict]]:
    """Returns (param_space, points_to_evaluate) for the Tuner. Tune (2.60) fails on a fixed
    trial whose keys are not in the search space (ray-project/ray#65293), so every such key
    enters the space as a constant, and every fixed trial gets every such key (the recipe's
    default where it named none); each trial's own values still take precedence."""
    import dataclasses
    import logging

    from .registry import RECIPES

    space = dict(exp.search_space)
    keys = [k for t in exp.trials for k in t]
    keys = [k for i, k in enumerate(keys) if k not in keys[:i] and k not in space]
    defaults = {f.name: f.default for f in dataclasses.fields(RECIPES.get(exp.recipe).config_cls)
                if f.default is not dataclasses.MISSING}
    defaults["recipe"] = exp.recipe  # a trial that names none runs the recipe
    defaults.update({k: getattr(exp.task, k) for k in exp.trial_task_fields()})
    points = []
    for t in exp.trials:
        points.append({**{k: exp.fixed.get(k, defaults.get(k)) for k in keys}, **t})
    for k in keys:
        space[k] = defaults.get(k) if k in ("recipe", *exp.trial_task_fields()) else points[0][k]
    # Tune warns for every preset value unlike the space's; here that is the point.
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    return space, points


def repeat_space(exp: Experiment, space: dict) -> dict:
    """Returns the param space that runs every configuration of `space`, sampled or fixed,
    once per seed of exp.repeat_seeds(): `space` plus a grid over "seed" (unchanged when
    exp.seeds == 1). Run it with constant_grid_search, so a sample's random values are drawn
    once for all its seeds; its sample_from domains become `RepeatedDraw`s, since Tune draws
    one that reads a grid value once per grid variant, each seed's included."""
    if exp.seeds == 1:
        return space
    from ray import tune
    from ray.tune.search import sample

    out = {k: tune.sample_from(RepeatedDraw(v, exp.seeds)) if isinstance(v, sample.Function) else v
           for k, v in space.items()}
    out[SEED_KEY] = tune.grid_search(exp.repeat_seeds())
    return out


class RepeatedDraw:
    """A sample_from function that draws `domain` (a Tune sample_from domain) once per
    configuration and hands that draw to the configuration's other `seeds - 1` repeats.
    A configuration is a variant's resolved values without its seed; Tune visits each one
    once per seed in a sample, so after `seeds` calls its draw is dropped and the next
    sample draws anew. A function that reads the seed itself gets the first seed's draw."""

    def __init__(self, domain, seeds: int):
        self.domain, self.seeds, self.draws = domain, seeds, {}

    def __call__(self, spec):
        from ray.tune.search import sample

        # dict methods: Tune's guard raises on attribute reads of values not yet resolved
        config = dict.get(spec, "config", spec)
        resolved = {k: v for k, v in dict.items(config)
                    if not isinstance(v, sample.Domain) and not (isinstance(v, dict) and "grid_search" in v)}
        if SEED_KEY not in resolved:  # Tune's pass before the grid: not one repeat yet
            return self.domain.sample(spec)
        key = json.dumps({k: v for k, v in resolved.items() if k != SEED_KEY}, sort_keys=True, default=str)
        if key not in self.draws:
            self.draws[key] = [self.domain.sample(spec), self.seeds]
        entry = self.draws[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.draws[key]
        return entry[0]


def resolve_kinds(exp: Experiment) -> dict:
    """Returns {name: DeviceKind} of the kinds the sweep runs on, in order. "all" means every
    kind some node can host (for ONNX recipes: with its execution provider there). Raises
    DeviceUnavailable (one line) when a kind asked for by name has no node offering it."""
    import ray

    from .devices.discovery import discover, usable_kinds
    from .devices.kinds import KINDS, capacity, get_kind, shared_device
    from .errors import DeviceUnavailable

    cluster = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    per_device = 1 if exp.workers_per_device == AUTO else exp.workers_per_device  # auto: chosen after the probe
    if exp.device_names == ["all"]:
        nodes = discover()
        names = usable_kinds(nodes) if exp.model_format == "onnx" else [
            n for n in KINDS if any(n in node["kinds"] for node in nodes)]
        if not names:
            raise DeviceUnavailable(f"device 'all': no node of the cluster can host any device kind; it has {cluster}")
        return {n: shared_device(KINDS[n], per_device) for n in names}
    kinds = {n: shared_device(get_kind(n), per_device) for n in exp.device_names}
    for name, kind in kinds.items():
        if capacity(kind, cluster) < 1:
            raise DeviceUnavailable(f"device kind '{name}' needs {kind.resources} per worker and no node of the cluster "
                               f"offers that; the cluster has {cluster}")
    return kinds


def workers_for(exp: Experiment, kind) -> int:
    """Returns how many workers of `kind` to start: exp.workers (per kind) or all the cluster
    holds (trials hold no CPU, see trial_resources)."""
    import ray

    from .devices.kinds import capacity

    room = capacity(kind, ray.cluster_resources())
    return min(exp.workers or room, room)


def trial_resources(cluster: dict) -> dict:
    """Returns the Ray resources one trial actor holds: one TRIAL_RESOURCE unit where the
    cluster offers it, else a thousandth of this node's `node:<ip>` resource. Either way no
    CPU, so device workers get every core (a head started with a plain `ray start --head`
    offers no TRIAL_RESOURCE), and trials stay on the driver's node, beside local storage."""
    if cluster.get(TRIAL_RESOURCE, 0) >= 1:
        return {TRIAL_RESOURCE: 1}
    import ray

    return {f"node:{ray.util.get_node_ip_address()}": 0.001}


@dataclass(frozen=True)
class Sweep:
    """A started sweep: its experiment, storage, plan, device pool and workers per kind."""

    exp: Experiment
    store: object  # storage.ResultsStore
    plan: SweepPlan
    pool: object  # the DevicePool actor handle
    workers: dict
    started: float  # time.time() when the pool was up
    # values every trial's config gets besides the experiment's space (the sensitivity
    # stage's ranking), so its record holds what the trial ran with
    constants: dict = field(default_factory=dict)
    # workers_per_device="auto": {kind name: the probe's levels and choice} (packing.PackingChoice.as_dict)
    packing: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """Returns the local folder of the sweep's own files (the storage's local copy)."""
        return self.store.local_dir


def run_experiment(exp: Experiment, *, results_dir: str | Path | None = None, summary_path: str | Path | None = None,
                   resume: bool = False, retry_errored: bool = False, verbose: int = 1,
                   callbacks: list | tuple = (), quiet: bool = False) -> SweepResult:
    """Validates `exp`, runs its baseline and its sweep, prints the trial table; returns a
    SweepResult. Everything goes under `results_dir`/NAME, where `results_dir` is the storage
    root: a local path or a URI (None: ./results, or ~/sweeper-results under a Ray job); the
    summary JSON goes there and also to `summary_path` when given. `resume` continues the
    sweep found there (finished trials kept); `retry_errored` also starts its ERROR trials
    again. `callbacks`: extra Ray Tune callbacks, run on this process. `quiet` (what the
    CLI does unless --verbose): Tune's own output off, one progress view instead, workers'
    log lines and library warnings into NAME/logs/ (model builds still print their progress)."""
    if retry_errored and not resume:
        raise ConfigError("sweep", "retry_errored", True, "only with resume (--resume): there is nothing to retry in a new sweep")
    exp.validate()
    from .storage import open_store

    store = open_store(results_dir, exp.name)  # before Ray starts: a bad path or URI is one line
    print(f"[sweeper] results: {store.uri}", flush=True)
    with quiet_console(store.local_dir / LOGS_DIR, quiet):
        sweep = start_sweep(exp, store)
        baseline = measure_baseline(sweep, resume)
        sweep, stage = sensitivity_stage(sweep)
        if quiet:
            from .reports.progress import ProgressView

            verbose = 0
            callbacks = [*callbacks, ProgressView(expected_trials(exp), *exp.objective)]
        from .exit_policy import exit_policy_for

        policy = exit_policy_for(exp, baseline)
        grid = make_tuner(sweep, resume, verbose, list(callbacks), retry_errored, policy).fit()
        summary = summarize(sweep, grid, baseline)
        add_goals(exp, summary, policy)
        if stage is not None:
            from .sensitivity import summary_entry

            summary["sensitivity"] = summary_entry(stage)
        if sweep.packing:
            summary["workers_per_device_auto"] = sweep.packing
        return write_results(sweep, summary, grid, summary_path)


def sensitivity_stage(sweep: Sweep) -> tuple[Sweep, dict | None]:
    """Runs the experiment's sensitivity stage, if it has one; returns (the sweep, whose
    trials' configs all get the stage's ranking as `sensitivity_ranking`, so each trial's
    record holds the ranking it ran with; the stage's result, or None)."""
    import dataclasses

    exp = sweep.exp
    if exp.sensitivity is None:
        return sweep, None
    from .sensitivity import RANKING_FIELD, run_stage

    stage = run_stage(sweep)
    return dataclasses.replace(sweep, constants={**sweep.constants, RANKING_FIELD: list(stage["ranking"])}), stage


def run_sensitivity(exp: Experiment, *, results_dir: str | Path | None = None, quiet: bool = False) -> dict:
    """Validates `exp` and runs only its sensitivity stage on a device pool (what `sweeper
    sensitivity` does), into `results_dir`/NAME/sensitivity/, where a later sweep of the same
    experiment finds and reuses it; returns the stage's result (sensitivity.run_stage)."""
    exp.validate()
    if exp.sensitivity is None:
        raise ConfigError("sweeper sensitivity", "sensitivity", None, f"recipe fields to quantize one layer with, "
                          f"e.g. Experiment(sensitivity={{'algorithm': 'rtn', 'bits': 4, 'block_size': 32}}); "
                          f"experiment {exp.name} has no sensitivity stage")
    from .sensitivity import FOLDER, TABLE_FILE, run_stage
    from .storage import open_store

    store = open_store(results_dir, exp.name)
    print(f"[sweeper] results: {store.uri}", flush=True)
    with quiet_console(store.local_dir / LOGS_DIR, quiet):
        sweep = start_sweep(exp, store)
        stage = run_stage(sweep)
    print((sweep.run_dir / FOLDER / TABLE_FILE).read_text(), flush=True)
    return stage


def expected_trials(exp: Experiment) -> int:
    """Returns how many trials the sweep makes: (samples x grid combinations + fixed
    trials) x seeds."""
    grid = 1
    for v in exp.search_space.values():
        if isinstance(v, dict) and isinstance(v.get("grid_search"), list):
            grid *= len(v["grid_search"])
    return (exp.num_samples * grid + len(exp.trials)) * exp.seeds


def start_sweep(exp: Experiment, store) -> Sweep:
    """Starts (or joins) Ray and the device pool for `exp`, writes experiment.json (what
    `sweeper leaderboard` needs from a bare results folder); returns the Sweep."""
    from .config import to_dict
    from .devices.pool import start_pool

    shared_zoo = prepare_reference_model(exp.model, store)
    namespace = f"sweeper-{exp.name}-{uuid.uuid4().hex[:8]}"
    metric, mode = exp.objective
    init_ray(namespace, shared_zoo)
    kinds = resolve_kinds(exp)
    if exp.model_format == "tf":  # TF workers: their own runtime_env on a cluster, checked at start
        from .devices.tf_workers import tf_kind

        kinds = {n: tf_kind(k) for n, k in kinds.items()}
    names = list(kinds)
    plan = SweepPlan.of(exp, namespace, names[0])
    packing = {}
    if exp.workers_per_device == AUTO:
        kinds, packing = pack_gpu_kinds(exp, kinds, plan, namespace)
    workers = {name: workers_for(exp, kind) for name, kind in kinds.items()}
    print(f"[sweeper] {exp.name}: workers {', '.join(f'{n} x{c}' for n, c in workers.items())}, model {exp.model}, "
          f"recipe {exp.recipe}, task {type(exp.task).registered_name}, {exp.num_samples} sample(s) + "
          f"{len(exp.trials)} fixed trial(s){f' x {exp.seeds} seeds' if exp.seeds > 1 else ''}, objective {metric} {mode}, "
          f"job time limit {exp.job_time_limit_s:g} s", flush=True)
    # each worker's job log is on its own node, under this path
    pool = start_pool(workers, namespace, plan.liveness, kinds=kinds, needs_provider=exp.model_format == "onnx",
                      job_log_dir=str(store.local_dir / WORKER_JOB_LOGS))
    store.local_dir.mkdir(parents=True, exist_ok=True)
    (store.local_dir / "experiment.json").write_text(json.dumps(
        {"experiment": exp.name, "model": exp.model, "recipe": exp.recipe, "device": names if len(names) > 1 else names[0],
         "metric": metric, "mode": mode, "task": to_dict(exp.task), "model_format": exp.model_format}, indent=2, default=str))
    return Sweep(exp, store, plan, pool, workers, time.time(), packing=packing)


def pack_gpu_kinds(exp: Experiment, kinds: dict, plan: SweepPlan, namespace: str) -> tuple[dict, dict]:
    """Returns (`kinds` with each GPU kind's workers per device chosen by measurement,
    {kind name: the probe's record}) for workers_per_device="auto" (sweeper/packing.py);
    kinds that hold no GPU are kept as they are."""
    from .devices.kinds import shared_device
    from .packing import choose_workers_per_device

    out, records = dict(kinds), {}
    for name, kind in kinds.items():
        if kind.resources.get("GPU", 0) <= 0:
            continue
        choice = choose_workers_per_device(exp, kind, plan, namespace)
        print(choice.table(), flush=True)
        out[name] = shared_device(kind, choice.workers)
        records[name] = choice.as_dict()
    return out, records


def measure_baseline(sweep: Sweep, resume: bool) -> dict:
    """Returns the FP32 model's metrics: kept from the interrupted run on a resume, else
    measured on the pool and stored (a resume after a crash finds it there)."""
    metric = sweep.plan.metric
    baseline_file = sweep.run_dir / "baseline.json"
    if resume and sweep.store.fetch(baseline_file.name):
        baseline = json.loads(baseline_file.read_text())
        print(f"[sweeper] baseline {metric} = {baseline.get(metric)} (kept from the interrupted run)", flush=True)
        return baseline
    everywhere = sum(sweep.workers.values()) > 1
    print(f"[sweeper] measuring the FP32 baseline{' on every worker at once (each loads the model and data)' if everywhere else ''} ...",
          flush=True)
    baseline = run_baseline(sweep.pool, sweep.plan, sweep.workers)
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    baseline_file.write_text(json.dumps(baseline, indent=2, default=str))
    sweep.store.publish()
    print(f"[sweeper] baseline {metric} = {baseline.get(metric)} ({time.time() - sweep.started:.1f}s)", flush=True)
    return baseline


def make_tuner(sweep: Sweep, resume: bool, verbose: int, callbacks: list, retry_errored: bool = False,
               policy=None):
    """Returns the Tuner of the sweep's trials (restored from storage on a resume), ended
    early by `policy` (an exit_policy.ExitPolicy) when given."""
    import ray
    from ray import tune

    exp, store = sweep.exp, sweep.store
    trainable = tune.with_resources(tune.with_parameters(trial_main, plan=sweep.plan),
                                    trial_resources(ray.cluster_resources()))
    cancel = _cancel_callback(sweep.plan.namespace)
    callbacks = [cancel, *callbacks]
    wb = wandb_callback(exp.wandb_project, sweep.run_dir, group=exp.name)
    if wb is not None:
        callbacks.append(wb)
    stop = {"training_iteration": exp.stop_after_reports} if exp.stop_after_reports else None
    if policy is not None:
        from ray.tune.stopper import CombinedStopper, MaximumIterationStopper

        # first: it counts ended trials and, at the end, tells the others of those it stopped
        policy.tell = [cancel] + ([wb] if wb is not None else [])
        callbacks.insert(0, policy)
        stop = policy if stop is None else CombinedStopper(MaximumIterationStopper(exp.stop_after_reports), policy)
    run_config = tune.RunConfig(name=exp.name, storage_path=store.root, callbacks=callbacks, verbose=verbose, stop=stop,
                                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                                # each report carries the encodings; only the latest matters
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=exp.checkpoints_to_keep))
    if resume and tune.Tuner.can_restore(store.uri):
        print(f"[sweeper] resuming {store.uri}", flush=True)
        # the same space again: Tune re-creates its sample_from resolvers only from a space
        # it is given, and trials made after the resume would keep their placeholders
        return tune.Tuner.restore(store.uri, trainable=trainable, resume_errored=False,
                                  restart_errored=retry_errored, param_space=tune_config(sweep)[0])
    param_space, config = tune_config(sweep)
    return tune.Tuner(trainable, param_space=param_space, tune_config=config, run_config=run_config)


def tune_config(sweep: Sweep) -> tuple[dict, object]:
    """Returns (param space, TuneConfig) of the sweep: its fixed trials, samples and seeds,
    every kind compared when it runs on several, and its scheduler."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .searchers import make_search_alg

    exp = sweep.exp
    metric, mode = exp.objective
    param_space, points = fixed_trial_space(exp)
    param_space.update(sweep.constants)
    if len(sweep.workers) > 1 and "device" not in param_space and not any("device" in t for t in exp.trials):
        param_space["device"] = tune.grid_search(list(sweep.workers))  # several kinds: compare them
    param_space = repeat_space(exp, param_space)
    # A searcher with its own objectives (optuna) takes the metric from them; Tune refuses
    # it twice, so the scheduler then names the sweep's metric itself.
    own = {} if exp.searcher == "random" else {"metric": metric, "mode": mode}
    if exp.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=exp.grace_period,
                                  max_t=exp.max_reports, reduction_factor=2, **own)
    else:
        scheduler = FIFOScheduler()
    config = tune.TuneConfig(
        metric=None if own else metric, mode=None if own else mode, scheduler=scheduler,
        # each fixed trial takes the place of one sample of the space
        num_samples=exp.num_samples + len(exp.trials),
        # As many live trials as workers, so trials meet workers in the order Tune made them
        # (ASHA's rungs depend on it).
        search_alg=make_search_alg(exp, param_space, points, sum(sweep.workers.values())),
        # A trial is a light relay: reusing its process saves ~3.5 s of actor start per
        # trial, time the freed worker would otherwise sit idle.
        reuse_actors=True)
    return param_space, config


def summarize(sweep: Sweep, grid, baseline: dict) -> dict:
    """Returns the sweep's summary dict (`build_summary`) with the run's timing, the
    workers' dispatch gaps and the pool's health once every worker is back ("pool":
    stranded workers, kills, timeouts, lost jobs, reclaimed workers)."""
    import ray

    pool, live = sweep.pool, sweep.plan.liveness
    # every trial has ended: cancelled jobs stop and killed workers restart within a grace
    health = ray.get(pool.drain.remote(live.cancel_grace_s + live.call_timeout_s),
                     timeout=live.cancel_grace_s + 2 * live.call_timeout_s)
    stats = ray.get(pool.stats.remote(), timeout=2 * live.call_timeout_s)
    waits = ray.get(pool.submit_wait_times.remote(), timeout=live.call_timeout_s)
    attempts = ray.get(pool.attempts.remote(), timeout=live.call_timeout_s)
    summary = build_summary(sweep.exp, grid, baseline, stats, waits, attempts)
    summary["elapsed_s"] = round(time.time() - sweep.started, 1)
    summary["seeds"] = sweep.exp.seeds
    # seconds a freed worker waited for its next, already queued, job: dispatch latency
    summary["worker_idle_gap_s"] = ray.get(pool.idle_gap_times.remote(), timeout=live.call_timeout_s)
    summary["pool"] = health
    summary["job_timeout_s"] = sweep.plan.job_timeout_s
    if health["stranded"]:
        print(f"[sweeper] {health['stranded']} worker(s) stranded at the end of the sweep", flush=True)
    return summary


def add_goals(exp: Experiment, summary: dict, policy=None) -> None:
    """Adds to the summary the objectives and constraints, each trial's feasibility, the
    feasible trials' Pareto front over the objectives, the pick (the best feasible trial on
    the first objective) and why the sweep stopped."""
    from .objectives import feasibility, feasible_front, pick

    objectives, constraints = exp.goals()
    summary["objectives"] = [{"metric": o.metric, "mode": o.mode} for o in objectives]
    summary["constraints"] = [c.text for c in constraints]
    ok = feasibility(summary["trials"], summary["baseline"], constraints)
    for t, f in zip(summary["trials"], ok):
        t["feasible"] = f
    summary["feasible_front"] = feasible_front(summary["trials"], objectives, ok)
    summary["pick"] = pick(summary["trials"], objectives, ok)
    summary["stopped_because"] = policy.reason if policy is not None and policy.reason else "every trial ended"
    if constraints or len(objectives) > 1 or policy is not None:
        found = f"pick {summary['pick']}" if summary["pick"] else "no feasible trial"
        print(f"[sweeper] {sum(ok)}/{len(ok)} trials feasible ({'; '.join(summary['constraints']) or 'no constraints'}); "
              f"{found}; feasible front {summary['feasible_front']}; stopped because {summary['stopped_because']}",
              flush=True)


def write_results(sweep: Sweep, summary: dict, grid, summary_path: str | Path | None) -> SweepResult:
    """Exports the best trial's files, writes summary.json and summary.txt (to the storage,
    and to `summary_path` when given), the leaderboard report, publishes the storage and
    prints where; returns the SweepResult."""
    exp, store, run_dir = sweep.exp, sweep.store, sweep.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    best = _export_best(summary, grid, run_dir, store.where)
    if exp.checkpoints_to_keep is None:
        prune_checkpoints(run_dir)
    summary["results"] = store.uri
    summary["pareto_size"] = size_front(summary)
    summary["reports"] = device_reports(summary)
    table = summary_table(summary)
    print("\n" + table, flush=True)
    if best:
        kept = "; encodings in " + summary["best_encodings"] if summary.get("best_encodings") else ""
        print(f"[sweeper] best trial {best['trial_id']}: {summary['metric']}={best['metrics'].get(summary['metric'])}{kept}",
              flush=True)
    stored = run_dir / "summary.json"
    out = Path(summary_path) if summary_path else stored
    write_records(summary, run_dir)
    for f in {out, stored}:  # the storage always keeps one; --summary asks for one more
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(summary, indent=2, default=str))
        f.with_suffix(".txt").write_text(table + "\n")
    report_leaderboard(exp, summary, stored, run_dir)
    write_page(summary, run_dir)
    store.publish()
    also = f" and {out}" if out != stored else ""
    print(f"[sweeper] summary written to {store.where(stored)}{also} (table: summary.txt beside it)", flush=True)
    print(f"[sweeper] results: {store.uri}", flush=True)
    return SweepResult(summary, run_dir, out, table, summary["workers"], storage=store.uri)


def prune_checkpoints(run_dir: Path) -> int:
    """Deletes every checkpoint folder of the sweep's trials (run_dir/<trial>/checkpoint_N)
    but each trial's latest; returns how many were deleted."""
    deleted = 0
    for trial_dir in (d for d in run_dir.iterdir() if d.is_dir() and (d / "params.json").is_file()):
        prefix = "checkpoint_"
        points = sorted((c for c in trial_dir.glob(prefix + "*") if c.is_dir() and c.name[len(prefix):].isdigit()),
                        key=lambda c: int(c.name[len(prefix):]))
        for old in points[:-1]:
            shutil.rmtree(old, ignore_errors=True)
            deleted += 1
    return deleted


def write_records(summary: dict, run_dir: Path) -> None:
    """Writes every trial's record (record.trial_record) to run_dir/records/<trial_id>.json,
    what `sweeper rerun` reads."""
    folder = run_dir / "records"
    folder.mkdir(parents=True, exist_ok=True)
    for t in summary["trials"]:
        (folder / f"{t['trial_id']}.json").write_text(json.dumps(trial_record(t, summary), indent=2, default=str))


def report_leaderboard(exp: Experiment, summary: dict, summary_path: Path, run_dir: Path) -> None:
    """Draws the Pareto plot beside the summary (when trials report a size or latency) and
    logs the ranked table and the plot to one sweep-level W&B run of the project. A failure
    here is printed, never raised: the summary is already on disk."""
    from .reports.leaderboard import build_board
    from .reports.plots import SWEEP_PARETO_PNG, plot_pareto
    from .reports.tracking import wandb_mode
    from .reports.wandb_report import log_leaderboard_run

    try:
        board = build_board([{**summary, "source": str(summary_path)}])
        plot = None
        if board.fronts:
            plot = summary_path.with_name(SWEEP_PARETO_PNG)
            plot_pareto(board, plot)
            print(f"[sweeper] Pareto plot written to {plot}", flush=True)
        if wandb_mode() != "disabled":
            where = log_leaderboard_run(exp.wandb_project, board.rows, board.columns, plot, run_dir,
                                        name=f"{exp.name}-leaderboard")
            print(f"[sweeper] leaderboard logged to W&B ({wandb_mode()}): {where}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reporting must not lose a finished sweep
        print(f"[sweeper] could not write the leaderboard report: {type(exc).__name__}: {exc}", flush=True)


def write_page(summary: dict, run_dir: Path) -> None:
    """Writes the sweep's report page (run_dir/report.html) and prints where. A failure
    here is printed, never raised: the summary is already on disk."""
    from .reports.report_page import PAGE_NAME, write_report_page

    try:
        path = write_report_page([(summary, run_dir)], run_dir / PAGE_NAME)
        print(f"[sweeper] report page: {path}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reporting must not lose a finished sweep
        print(f"[sweeper] could not write the report page: {type(exc).__name__}: {exc}", flush=True)


def build_summary(exp: Experiment, grid, baseline: dict, stats: dict, waits: list[float],
                  attempts: dict | None = None) -> dict:
    """Returns the summary dict: {"experiment", "metric", "mode", "baseline", "trials": [...], ...}."""
    metric, mode = exp.objective
    trials = []
    for r in grid:
        m = dict(r.metrics or {})
        trial_id = m.get("trial_id") or Path(r.path).name
        entry = {"trial_id": trial_id, "status": "ERROR" if r.error else "TERMINATED",
                 "config": dict(r.config or {}),
                 "metrics": {k: v for k, v in m.items() if is_metric_key(k)}}
        if r.error:
            entry["error"] = one_line(r.error)
        entry["attempts"] = (attempts or {}).get(trial_id, 0)  # jobs started for it by this driver
        entry["path"] = r.path
        if r.checkpoint is not None:
            entry["checkpoint"] = r.checkpoint.path
        trials.append(entry)
    sign = 1 if mode == "min" else -1
    trials.sort(key=lambda t: (t["status"] != "TERMINATED",
                               sign * t["metrics"].get(metric, math.inf * sign) if _finite(t["metrics"].get(metric)) else math.inf))
    base_settings = baseline.get("eval_settings", {})
    summary = {
        "experiment": exp.name, "metric": metric, "mode": mode,
        "baseline": {k: v for k, v in baseline.items() if k != "eval_settings"},
        "eval_settings": base_settings,
        "model": exp.model, "recipe": exp.recipe, "device": exp.device,
        "devices": {wid: {"kind": s.get("kind"), "node_id": s.get("node_id"), "device": s.get("device"),
                          "versions": s.get("versions")} for wid, s in stats.items()},
        "seed": exp.seed, "origin": exp.origin, "driver_versions": package_versions(),
        "trials": trials,
        "failed": [{"trial_id": t["trial_id"], "error": t.get("error", "")} for t in trials if t["status"] == "ERROR"],
        "workers": {wid: s.get("counters", s) for wid, s in stats.items()},
        "job_start_wait_s": waits,
    }
    if has_repeats(trials):  # mean ± std per configuration, ties within the noise marked
        summary["configurations"] = aggregate_configurations(trials, metric, mode)
        mark_size_front(summary["configurations"], metric, mode)
    return summary




def _export_best(summary: dict, grid, run_dir: Path, where=str) -> dict | None:
    metric = summary["metric"]
    done = [t for t in summary["trials"] if t["status"] == "TERMINATED" and _finite(t["metrics"].get(metric))]
    if not done:
        return None
    best = done[0]
    summary["best_trial"] = best["trial_id"]
    # the Checkpoint, not its path: on remote storage as_directory() downloads it
    ckpt = next((r.checkpoint for r in grid if r.checkpoint is not None and best.get("checkpoint")
                 and r.checkpoint.path == best["checkpoint"]), None)
    if ckpt is not None:
        with ckpt.as_directory() as src:
            for f in Path(src).iterdir():
                if f.suffix in (".json", ".onnx"):  # encodings, reports, a deployable graph
                    dst = run_dir / f"best_{f.name}"
                    shutil.copyfile(f, dst)
                    summary["best_" + f.stem] = where(dst)
    return best
