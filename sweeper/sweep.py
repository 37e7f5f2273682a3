"""Runs an Experiment with ray.tune.Tuner over a pool of device workers.

A Tune trial is light: it asks the pool for a worker of its kind, sends it a job and
relays the worker's per-epoch metrics to `tune.report`. The expensive state (models,
tokenized data) lives on the workers across trials.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .devices.jobspec import JobSpec
from .config import is_finite_number as _finite
from .devices.pool import POOL_ACTOR_NAME
from .experiment import Experiment
from .noise import SEED_KEY, aggregate_configurations, has_repeats
from .tracking import format_table, wandb_callback

# Trials only relay metrics, so they hold no CPU a device worker could use: locally Ray is
# started with this custom resource; a cluster offers it on its head node (cluster.yaml).
TRIAL_RESOURCE = "sweeper_trial"


@dataclass
class SweepResult:
    """What a finished sweep produced: the summary dict and where files were written."""

    summary: dict
    results_dir: Path
    summary_path: Path | None = None
    table: str = ""
    worker_stats: dict = field(default_factory=dict)
    storage: str = ""  # the experiment folder as a path or URI (results_dir is its local copy)


def _flatten(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items() if vv is not None})
        else:
            out[k] = v
    return out


def iter_job_events(worker, job_id: str, poll_s: float = 2.0):
    """Yields a worker job's events (dicts with "type") in order until the job has ended."""
    import ray

    cursor = 0
    while True:
        # poll returns every event after `cursor` together with the state, atomically
        events, state = ray.get(worker.poll.remote(job_id, cursor, poll_s))
        cursor += len(events)
        yield from events
        if state != "RUNNING":
            return


def trial_main(config: dict, plan: dict) -> None:
    """The Tune function trainable: runs one trial's job on a pooled worker and reports
    each of its metric records. Raises (trial ERROR) if the job fails or a metric is NaN."""
    import ray
    from ray import tune

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    pool = ray.get_actor(POOL_ACTOR_NAME, namespace=plan["namespace"])
    known = ray.get(pool.known_failure.remote(trial_id))
    if known:  # deterministic failure seen on an earlier attempt: don't burn the device again
        raise RuntimeError(known)
    kind = config.get("device") or plan["device"]
    # "seed" (a repeat's seed) seeds the job; it is a recipe field only where the recipe has one
    job_keys = ("device",) if plan.get("seed_in_recipe", True) else ("device", SEED_KEY)
    spec = job_spec(plan, recipe_kwargs={**plan["fixed"], **{k: v for k, v in config.items() if k not in job_keys}},
                    trial_id=trial_id, seed=config.get(SEED_KEY))
    t0 = time.time()
    worker, worker_id, job_id, queued_s = ray.get(pool.submit.remote(kind, spec))
    # Trials may be started ahead of free workers; the wait for one is queueing, not overhead.
    overhead_s = time.time() - t0 - queued_s
    metric = plan["metric"]
    ended = False
    try:
        for ev in iter_job_events(worker, job_id):
            if ev["type"] == "metrics":
                m = _flatten(ev["metrics"])
                m.update(worker_id=worker_id, job_start_overhead_s=overhead_s, job_queue_wait_s=queued_s)
                value = m.get(metric)
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    reason = f"{metric} is {value!r} at epoch {m.get('epoch', '-')}"
                    ray.get(pool.record_failure.remote(trial_id, reason))
                    raise FloatingPointError(reason)
                if ev.get("artifacts"):
                    with tempfile.TemporaryDirectory(prefix="sweeper-artifacts-") as tmp:
                        for name, data in ev["artifacts"].items():
                            (Path(tmp) / name).write_bytes(data)
                        tune.report(m, checkpoint=tune.Checkpoint.from_directory(tmp))
                else:
                    tune.report(m)
            elif ev["type"] == "error":
                ray.get(pool.record_failure.remote(trial_id, ev["error"]))
                raise RuntimeError(f"job failed on {worker_id}: {ev['error']}")
        ended = True
    finally:
        if not ended:  # the trial is being torn down (or raised): free the worker now
            worker.cancel.remote(job_id)


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
    from .tracking import wandb_mode

    pin_data_dirs()  # absolute: other nodes and workers do not share our working directory
    env = {"WANDB_MODE": wandb_mode()}
    for name in ("SWEEPER_DATA_DIR", "SWEEPER_CACHE_DIR"):
        if os.environ.get(name):
            env[name] = str(Path(os.environ[name]).expanduser().resolve())
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
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, log_to_driver=True, runtime_env=runtime_env)
    else:
        # address="local": always a new local Ray, never one another process left running
        ray.init(address="local", num_cpus=local_cpu_count(), resources={TRIAL_RESOURCE: 10_000}, include_dashboard=False, namespace=namespace,
                 log_to_driver=True, configure_logging=True, logging_level="WARNING", runtime_env=runtime_env)


def share_reference_model(model: str, store) -> dict:
    """When the storage is shared (given as a URI) and `model` is a reference model: builds
    it here once and puts it on the storage, where every node's workers copy it from
    instead of training it again. Returns the workers' env var saying where ({} if not)."""
    from .models.zoo import SHARED_ZOO_ENV, publish_shared, zoo_names

    name = model[4:] if model.startswith("zoo:") else model
    if not (store.shared and name in zoo_names()):
        return {}
    publish_shared(name, store.zoo_uri, log=lambda line: print(f"[sweeper] {line}", flush=True))
    return {SHARED_ZOO_ENV: store.zoo_uri}


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
    points = []
    for t in exp.trials:
        points.append({**{k: exp.fixed.get(k, defaults.get(k)) for k in keys}, **t})
    for k in keys:
        space[k] = points[0][k]
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
    from .devices.kinds import KINDS, capacity, get_kind
    from .errors import DeviceUnavailable

    cluster = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    if exp.device_names == ["all"]:
        nodes = discover()
        names = usable_kinds(nodes) if exp.model_format == "onnx" else [
            n for n in KINDS if any(n in node["kinds"] for node in nodes)]
        if not names:
            raise DeviceUnavailable(f"device 'all': no node of the cluster can host any device kind; it has {cluster}")
        return {n: KINDS[n] for n in names}
    kinds = {n: get_kind(n) for n in exp.device_names}
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


def job_spec(plan: dict, recipe_kwargs: dict | None, trial_id: str = "", seed: int | None = None) -> JobSpec:
    """Returns the JobSpec of one trial of the plan (recipe_kwargs None: the FP32 baseline),
    seeded with `seed` (None: the plan's seed)."""
    return JobSpec(model=plan["model"], task=plan["task"], task_kwargs=plan["task_kwargs"],
                   recipe=plan["recipe"] if recipe_kwargs is not None else None, recipe_kwargs=recipe_kwargs or {},
                   seed=plan["seed"] if seed is None else seed, trial_id=trial_id, trust_remote_code=plan["trust_remote_code"],
                   plugins=plan["plugins"], model_format=plan["model_format"], onnx_opset=plan["onnx_opset"])


def run_baseline(pool, plan: dict) -> dict:
    """Returns the FP32 model's metrics on the plan's task (one job on the pool, no recipe)."""
    import ray

    spec = job_spec(plan, None)
    worker, _, job_id, _ = ray.get(pool.submit.remote(plan["device"], spec))
    metrics = {}
    for ev in iter_job_events(worker, job_id, poll_s=5.0):
        if ev["type"] == "metrics":
            metrics = ev["metrics"]
        elif ev["type"] == "error":
            from .errors import SweeperError

            raise SweeperError(f"baseline evaluation failed: {ev['error']}")
    return metrics


def run_experiment(exp: Experiment, *, results_dir: str | Path | None = None, summary_path: str | Path | None = None,
                   resume: bool = False, verbose: int = 1) -> SweepResult:
    """Validates `exp`, runs its baseline and its sweep, prints the trial table; returns a
    SweepResult. Everything goes under `results_dir`/NAME, where `results_dir` is the storage
    root: a local path or a URI (None: ./results, or ~/sweeper-results under a Ray job); the
    summary JSON goes there and also to `summary_path` when given."""
    exp.validate()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .config import to_dict
    from .devices.pool import start_pool
    from .storage import open_store

    store = open_store(results_dir, exp.name)  # before Ray starts: a bad path or URI is one line
    run_dir = store.local_dir
    print(f"[sweeper] results: {store.uri}", flush=True)
    shared_zoo = share_reference_model(exp.model, store)
    namespace = f"sweeper-{exp.name}-{uuid.uuid4().hex[:8]}"
    metric, mode = exp.objective
    init_ray(namespace, shared_zoo)
    kinds = resolve_kinds(exp)
    if exp.model_format == "tf":  # TF workers: their own runtime_env on a cluster, checked at start
        from .devices.tf_workers import tf_kind

        kinds = {n: tf_kind(k) for n, k in kinds.items()}
    trial_res = trial_resources(ray.cluster_resources())
    workers = {name: workers_for(exp, kind) for name, kind in kinds.items()}
    names = list(kinds)
    print(f"[sweeper] {exp.name}: workers {', '.join(f'{n} x{c}' for n, c in workers.items())}, model {exp.model}, "
          f"recipe {exp.recipe}, task {type(exp.task).registered_name}, {exp.num_samples} sample(s) + "
          f"{len(exp.trials)} fixed trial(s){f' x {exp.seeds} seeds' if exp.seeds > 1 else ''}, objective {metric} {mode}", flush=True)
    pool = start_pool(workers, namespace, kinds=kinds, needs_provider=exp.model_format == "onnx")

    task_kwargs = {k: v for k, v in to_dict(exp.task).items() if k != "name"}
    plan = {"namespace": namespace, "model": exp.model, "task": type(exp.task).registered_name,
            "task_kwargs": task_kwargs, "recipe": exp.recipe, "fixed": dict(exp.fixed), "seed": exp.seed,
            "device": names[0], "metric": metric, "trust_remote_code": exp.trust_remote_code,
            "model_format": exp.model_format, "onnx_opset": exp.onnx_opset, "seed_in_recipe": exp.seed_in_recipe,
            # absolute paths: workers may not share the driver's working directory
            "plugins": tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in exp.plugins)}
    t0 = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    # What Tune's own files do not say: lets `sweeper leaderboard` read a bare results folder.
    (run_dir / "experiment.json").write_text(json.dumps(
        {"experiment": exp.name, "model": exp.model, "recipe": exp.recipe, "device": names if len(names) > 1 else names[0],
         "metric": metric,
         "mode": mode, "task": to_dict(exp.task), "model_format": exp.model_format}, indent=2, default=str))
    baseline_file = run_dir / "baseline.json"
    if resume and store.fetch(baseline_file.name):
        baseline = json.loads(baseline_file.read_text())
        print(f"[sweeper] baseline {metric} = {baseline.get(metric)} (kept from the interrupted run)", flush=True)
    else:
        print("[sweeper] measuring the FP32 baseline ...", flush=True)
        baseline = run_baseline(pool, plan)
        run_dir.mkdir(parents=True, exist_ok=True)
        baseline_file.write_text(json.dumps(baseline, indent=2, default=str))
        store.publish()  # a resume after a crash finds it there
        print(f"[sweeper] baseline {metric} = {baseline.get(metric)} ({time.time() - t0:.1f}s)", flush=True)

    trainable = tune.with_resources(tune.with_parameters(trial_main, plan=plan), trial_res)
    param_space, points = fixed_trial_space(exp)
    if len(names) > 1 and "device" not in param_space and not any("device" in t for t in exp.trials):
        param_space["device"] = tune.grid_search(names)  # several kinds: compare them
    param_space = repeat_space(exp, param_space)
    if exp.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=exp.grace_period,
                                  max_t=_max_reports(exp), reduction_factor=2)
    else:
        scheduler = FIFOScheduler()
    callbacks = [_cancel_callback(namespace)]
    wb = wandb_callback(exp.wandb_project, run_dir, group=exp.name)
    if wb is not None:
        callbacks.append(wb)
    run_config = tune.RunConfig(name=exp.name, storage_path=store.root, callbacks=callbacks, verbose=verbose,
                                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                                # each report carries the encodings; only the latest matters
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    if resume and tune.Tuner.can_restore(store.uri):
        print(f"[sweeper] resuming {store.uri}", flush=True)
        tuner = tune.Tuner.restore(store.uri, trainable=trainable, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=scheduler,
                # each fixed trial takes the place of one sample of the space
                num_samples=exp.num_samples + len(exp.trials),
                # As many live trials as workers, so trials meet workers in the order Tune
                # made them (ASHA's rungs depend on it). Tune ignores max_concurrent_trials
                # for a given BasicVariantGenerator.
                search_alg=BasicVariantGenerator(random_state=exp.seed, max_concurrent=sum(workers.values()),
                                                 points_to_evaluate=points or None,
                                                 # one random draw for all of a sample's grid variants:
                                                 # the repeats of a configuration share its values
                                                 constant_grid_search=exp.seeds > 1),
                # A trial is a light relay: reusing its process saves ~3.5 s of actor start
                # per trial, time the freed worker would otherwise sit idle.
                reuse_actors=True),
            run_config=run_config)
    grid = tuner.fit()
    stats = ray.get(pool.stats.remote())
    waits = ray.get(pool.submit_wait_times.remote())
    attempts = ray.get(pool.attempts.remote())
    summary = build_summary(exp, grid, baseline, stats, waits, attempts)
    summary["elapsed_s"] = round(time.time() - t0, 1)
    summary["seeds"] = exp.seeds
    # seconds a freed worker waited for its next, already queued, job: dispatch latency
    summary["worker_idle_gap_s"] = ray.get(pool.idle_gap_times.remote())
    run_dir.mkdir(parents=True, exist_ok=True)
    best = _export_best(summary, grid, run_dir, store.where)
    summary["pareto_size"] = size_front(summary)
    summary["reports"] = device_reports(summary)
    table = summary_table(summary)
    print("\n" + table, flush=True)
    if best:
        kept = "; encodings in " + summary["best_encodings"] if summary.get("best_encodings") else ""
        print(f"[sweeper] best trial {best['trial_id']}: {metric}={best['metrics'].get(metric)}{kept}", flush=True)
    stored = run_dir / "summary.json"
    out = Path(summary_path) if summary_path else stored
    for f in {out, stored}:  # the storage always keeps one; --summary asks for one more
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(summary, indent=2, default=str))
        f.with_suffix(".txt").write_text(table + "\n")
    report_leaderboard(exp, summary, stored, run_dir)
    store.publish()
    also = f" and {out}" if out != stored else ""
    print(f"[sweeper] summary written to {store.where(stored)}{also} (table: summary.txt beside it)", flush=True)
    print(f"[sweeper] results: {store.uri}", flush=True)
    return SweepResult(summary, run_dir, out, table, stats, storage=store.uri)


def report_leaderboard(exp: Experiment, summary: dict, summary_path: Path, run_dir: Path) -> None:
    """Draws the Pareto plot beside the summary (when trials report a size or latency) and
    logs the ranked table and the plot to one sweep-level W&B run of the project. A failure
    here is printed, never raised: the summary is already on disk."""
    from .leaderboard import build_board
    from .report_plot import plot_pareto
    from .tracking import wandb_mode
    from .wandb_report import log_leaderboard_run

    try:
        board = build_board([{**summary, "source": str(summary_path)}])
        plot = None
        if board.fronts:
            plot = summary_path.with_name(summary_path.stem + "_pareto.png")
            plot_pareto(board, plot)
            print(f"[sweeper] Pareto plot written to {plot}", flush=True)
        if wandb_mode() != "disabled":
            where = log_leaderboard_run(exp.wandb_project, board.rows, board.columns, plot, run_dir,
                                        name=f"{exp.name}-leaderboard")
            print(f"[sweeper] leaderboard logged to W&B ({wandb_mode()}): {where}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reporting must not lose a finished sweep
        print(f"[sweeper] could not write the leaderboard report: {type(exc).__name__}: {exc}", flush=True)


def _max_reports(exp: Experiment) -> int:
    from ray.tune.search import sample

    epochs = exp.search_space.get("epochs", exp.fixed.get("epochs", 1))
    if isinstance(epochs, dict) and "grid_search" in epochs:
        top = max(epochs["grid_search"])
    elif isinstance(epochs, sample.Categorical):
        top = max(epochs.categories)
    elif isinstance(epochs, sample.Integer):
        top = epochs.upper - 1
    else:
        top = int(epochs) if isinstance(epochs, int) else 1
    return top + 1  # the epoch-0 report (encodings initialised, before training) counts too


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
                 "metrics": {k: v for k, v in m.items() if _is_metric(k)}}
        if r.error:
            entry["error"] = _one_line(r.error)
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
        "devices": {wid: {"kind": s.get("kind"), "node_id": s.get("node_id"), "device": s.get("device")}
                    for wid, s in stats.items()},
        "trials": trials,
        "failed": [{"trial_id": t["trial_id"], "error": t.get("error", "")} for t in trials if t["status"] == "ERROR"],
        "workers": {wid: s.get("counters", s) for wid, s in stats.items()},
        "job_start_wait_s": waits,
    }
    if has_repeats(trials):  # mean ± std per configuration, ties within the noise marked
        summary["configurations"] = aggregate_configurations(trials, metric, mode)
        mark_size_front(summary["configurations"], metric, mode)
    return summary




def _is_metric(key: str) -> bool:
    skip = ("config", "date", "hostname", "node_ip", "pid", "time_this_iter_s", "time_since_restore",
            "timestamp", "iterations_since_restore", "checkpoint_dir_name", "done", "trial_id",
            "time_total_s", "experiment_tag", "should_checkpoint")
    return not key.startswith(skip) and not key.startswith("eval_settings/")


def _one_line(err) -> str:
    text = str(getattr(err, "cause", None) or err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "Type: message" line names the reason
        if ("Error" in ln or "Exception" in ln) and ":" in ln:
            return ln[:500]
    return (lines[-1] if lines else repr(err))[:500]


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


def device_reports(summary: dict) -> list[dict]:
    """Returns one report per finished trial that measured latency, in the seed's shape:
    {"model", "dataset", "device", "precision", "perplexity", "latency_ms", "tokens_per_s",
    ...} with the device's name and the evaluation settings; [] when no trial did."""
    settings = summary.get("eval_settings", {})
    devices = summary.get("devices", {})
    out = []
    for t in summary["trials"]:
        m = t["metrics"]
        if t["status"] != "TERMINATED" or "latency_ms" not in m:
            continue
        wid = m.get("worker_id", "")
        out.append({"model": summary["model"], "dataset": f"{settings.get('dataset')}/{settings.get('split')}",
                    "device": t["config"].get("device") or devices.get(wid, {}).get("kind"),
                    "device_name": devices.get(wid, {}).get("device"),
                    "precision": t["config"].get("precision", "fp32"),
                    "perplexity": m.get(summary["metric"]) if summary["metric"] == "wikitext2_ppl" else None,
                    "latency_ms": m.get("latency_ms"), "tokens_per_s": m.get("tokens_per_s"),
                    "batch_size": settings.get("batch_size"),
                    "context_length": settings.get("context_length"), "stride": settings.get("stride"),
                    "max_tokens": settings.get("max_tokens"), "trial_id": t["trial_id"]})
    return out


def size_front(summary: dict) -> list[str]:
    """Returns the trial ids on the quality-vs-size Pareto front (objective in its sense,
    model_size_mb minimised) among finished trials that report a size; [] when none do."""
    from .pareto import pareto_front

    metric, mode = summary["metric"], summary["mode"]
    done = [t for t in summary["trials"] if t["status"] == "TERMINATED"
            and _finite(t["metrics"].get(metric)) and _finite(t["metrics"].get("model_size_mb"))]
    points = [(t["metrics"][metric], t["metrics"]["model_size_mb"]) for t in done]
    return [done[i]["trial_id"] for i in pareto_front(points, (mode, "min"))] if points else []


def mark_size_front(configs: list[dict], metric: str, mode: str) -> None:
    """Sets "pareto_size" (on the quality-vs-size front of the means) and "pareto_size_tied"
    (no configuration beats it beyond the noise, `pareto.tied_with_front`) on each of the
    aggregates `configs` that report a mean of `metric` and model_size_mb; None on the others."""
    from .noise import as_estimate
    from .pareto import pareto_front, tied_with_front

    for c in configs:
        c["pareto_size"] = c["pareto_size_tied"] = None
    done = [c for c in configs if all(as_estimate(c["metrics"].get(k)).mean is not None for k in (metric, "model_size_mb"))]
    points = [tuple(as_estimate(c["metrics"][k]) for k in (metric, "model_size_mb")) for c in done]
    if not points:
        return
    front = set(pareto_front([tuple(e.mean for e in p) for p in points], (mode, "min")))
    for i, (c, tied) in enumerate(zip(done, tied_with_front(points, (mode, "min")))):
        c["pareto_size"], c["pareto_size_tied"] = i in front, tied


def configuration_table(summary: dict) -> str:
    """Returns the per-configuration table of a summary with "configurations": n finished
    repeats, the objective's mean ± sample std, Δ% of the mean vs the FP32 baseline, whether
    it is tied with the best (`noise.within_noise`), and, where sized, the size and the
    quality-vs-size front ('*' on it, '≈' tied with it)."""
    from .noise import as_estimate, format_estimate, tie_mark

    metric, configs = summary["metric"], summary["configurations"]
    base = summary["baseline"].get(metric)
    keys = sorted({k for c in configs for k in c["config"]})
    keys = [k for k in keys if len({json.dumps(c["config"].get(k), default=str) for c in configs}) > 1] or keys
    sized = any(c.get("pareto_size") is not None for c in configs)
    rows = []
    for c in configs:
        e = as_estimate(c["metrics"].get(metric))
        row = {**c["config"], "n": f"{c['n']}" + (f" ({c['failed']} failed)" if c["failed"] else ""),
               f"{metric} mean ± std": format_estimate(e), "tied with best": tie_mark(c["tied_with_best"]),
               "size MB": format_estimate(as_estimate(c["metrics"].get("model_size_mb"))),
               "front": "" if c.get("pareto_size") is None else "*" if c["pareto_size"] else tie_mark(c["pareto_size_tied"])}
        if e.mean is not None and _finite(base):
            row["Δ vs fp32 %"] = 100.0 * (e.mean - base) / base
        rows.append(row)
    cols = keys + ["n", f"{metric} mean ± std", "Δ vs fp32 %", "tied with best"] + (["size MB", "front"] if sized else [])
    legend = ("mean ± sample std (ddof=1) over the n finished seeds; ≈ = tied: |Δ mean| <= 2·sqrt(s1²/n1 + s2²/n2) "
              "(two standard errors), ? = a single finished run (no noise estimate)")
    if sized:
        legend += "\nfront: * on the quality-vs-size front of the means, ≈ dominated only within the noise"
    return f"per configuration ({len(configs)}), best mean first:\n" + format_table(rows, cols) + "\n" + legend


def summary_table(summary: dict) -> str:
    """Returns the trial table (sorted by the objective) with Δ vs the FP32 baseline, and,
    where trials report model_size_mb, the size and a '*' on the quality-vs-size front."""
    metric = summary["metric"]
    base = summary["baseline"].get(metric)
    keys = sorted({k for t in summary["trials"] for k in t["config"]})
    sized = any("model_size_mb" in t["metrics"] for t in summary["trials"])
    front = set(summary.get("pareto_size") or [])
    rows = [{"trial": "fp32 baseline", metric: base, "status": "-", "size MB": summary["baseline"].get("model_size_mb", "")}]
    for t in summary["trials"]:
        v = t["metrics"].get(metric)
        row = {"trial": t["trial_id"], "status": t["status"], metric: v, **t["config"],
               "epoch": t["metrics"].get("epoch", ""), "size MB": t["metrics"].get("model_size_mb", ""),
               "front": "*" if t["trial_id"] in front else ""}
        if _finite(v) and _finite(base):
            row["Δ vs fp32"] = v - base
            row["Δ vs fp32 %"] = 100.0 * (v - base) / base
        if t["status"] == "ERROR":
            row["error"] = t.get("error", "")[:80]
        rows.append(row)
    if sized:
        cols = ["trial", "status"] + keys + ["size MB", metric, "Δ vs fp32", "Δ vs fp32 %", "front"]
    else:
        cols = ["trial", "status", metric, "Δ vs fp32 %", "epoch"] + keys
    if any("error" in r for r in rows):
        cols.append("error")
    settings = summary.get("eval_settings", {})
    caption = ", ".join(f"{k}={v}" for k, v in settings.items() if k in ("dataset", "split", "context_length", "stride", "max_tokens", "dtype"))
    legend = "\n* = on the quality-vs-size Pareto front; size MB = graph plus external data, 2**20 bytes" if sized else ""
    per_config = configuration_table(summary) + "\n\nruns:\n" if summary.get("configurations") else ""
    return f"{summary['experiment']}: {metric} ({summary['mode']}) on {caption}\n" + per_config + format_table(rows, cols) + legend
