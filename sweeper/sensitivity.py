"""Per-layer sensitivity, spread over the sweep's device pool.

For each quantizable layer the experiment's probe recipe (`Experiment.sensitivity`, recipe
fields over `fixed`) quantizes that layer alone, everything else in float, and the task
measures the metric: one job per layer, as many at a time as the pool has workers. With
the "all_but" view it also quantizes everything except that layer. The ranking (most
harmful layer first) is kept in the run's `sensitivity/` folder with a table and a bar
plot, and handed to every trial of the sweep as the recipe field `sensitivity_ranking`,
which a mixed-precision recipe reads (e.g. onnx_ptq's `protected_layers`).

A recipe takes part by having the config fields `layers` (quantize only these; an empty
list quantizes nothing), `float_layers` and `sensitivity_ranking`, and by naming every
layer of the model in its job's info (`Quantized.info["layers"]`).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .config import is_finite_number
from .errors import SweeperError

VIEWS = ("alone", "all_but")
FOLDER = "sensitivity"
RESULT_FILE = "sensitivity.json"
TABLE_FILE = "sensitivity.txt"
PLOT_FILE = "sensitivity.png"
RANKING_FIELD = "sensitivity_ranking"
LAYER_FIELDS = ("layers", "float_layers", RANKING_FIELD)


class SensitivityFailed(SweeperError):
    """A sensitivity job failed: without every layer's number there is no ranking."""


@dataclass(frozen=True)
class LayerJob:
    """One job of the stage: `view` "list" (nothing quantized: the FP32 metric on the probe's
    task, and the layer names), "all" (every layer), "alone" or "all_but" of `layer`."""

    view: str
    layer: str = ""

    def recipe_kwargs(self, probe: dict) -> dict:
        """Returns the recipe fields of this job: `probe` with its layer choice."""
        if self.view == "list":
            return {**probe, "layers": []}
        if self.view == "alone":
            return {**probe, "layers": [self.layer]}
        if self.view == "all_but":
            return {**probe, "float_layers": [self.layer]}
        return dict(probe)


def probe_kwargs(exp) -> dict:
    """Returns the recipe fields the stage quantizes layers with: fixed, then sensitivity."""
    return {**exp.fixed, **(exp.sensitivity or {})}


def stage_key(exp) -> str:
    """Returns a digest of what decides the stage's numbers (model, recipe, probe fields,
    task, views, seed): a stored result with the same key is reused, not measured again."""
    from .config import to_dict

    task = exp.sensitivity_task or exp.task
    what = {"model": exp.model, "recipe": exp.recipe, "probe": probe_kwargs(exp), "task": to_dict(task),
            "views": list(exp.sensitivity_views), "seed": exp.seed, "onnx_opset": exp.onnx_opset}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def harm(value: float, base: float, mode: str) -> float:
    """Returns how much worse `value` is than `base` for a metric of `mode` ("min": larger
    is worse), in the metric's unit; negative when it is better."""
    return value - base if mode == "min" else base - value


def ranking_of(rows: list[dict]) -> list[str]:
    """Returns the layers of `rows` (dicts with "layer" and "harm") most harmful first; ties
    keep the model's layer order."""
    order = {r["layer"]: i for i, r in enumerate(rows)}
    return [r["layer"] for r in sorted(rows, key=lambda r: (-r["harm"], order[r["layer"]]))]


def rank_correlation(a: list[str], b: list[str]) -> float:
    """Returns Spearman's rank correlation of two rankings of the same items (1: the same
    order, -1: reversed)."""
    if sorted(a) != sorted(b):
        raise ValueError("rankings of different items")
    n = len(a)
    if n < 2:
        return 1.0
    pos = {x: i for i, x in enumerate(b)}
    d2 = sum((i - pos[x]) ** 2 for i, x in enumerate(a))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def layer_rows(layers: list[str], outcomes: dict, metric: str, mode: str) -> tuple[list[dict], dict]:
    """Returns (rows, facts): one row per layer (metric with it alone quantized, its harm vs
    the FP32 metric, percent, rank; with the all_but view, the metric with every other
    layer quantized and how much keeping it in float recovers of the all-quantized harm),
    and the facts (fp32 and all-quantized metric). `outcomes` maps LayerJob -> metrics."""
    base = outcomes[LayerJob("list")][metric]
    everything = outcomes.get(LayerJob("all"), {}).get(metric)
    rows = []
    for layer in layers:
        alone = outcomes[LayerJob("alone", layer)][metric]
        row = {"layer": layer, metric: alone, "harm": harm(alone, base, mode),
               "harm %": 100.0 * harm(alone, base, mode) / abs(base) if base else None}
        but = outcomes.get(LayerJob("all_but", layer), {}).get(metric)
        if but is not None:
            row[f"{metric} all but it"] = but
            row["recovered"] = harm(everything, but, mode) if is_finite_number(everything) else None
        rows.append(row)
    ranked = ranking_of(rows)
    for row in rows:
        row["rank"] = ranked.index(row["layer"]) + 1
    rows.sort(key=lambda r: r["rank"])
    return rows, {"fp32": base, "all_quantized": everything}


def run_stage(sweep, progress=None) -> dict:
    """Runs (or reuses, when `sweep`'s run folder holds a result of the same stage_key) the
    sensitivity stage of `sweep` (sweep.Sweep) on its pool; writes sensitivity.json, .txt
    and .png into <run>/sensitivity/ and returns the result dict: ranking, rows, columns,
    metric, mode, fp32, all_quantized, jobs, workers, seconds (wall clock of the stage),
    first_job_s (the listing jobs, one per worker at once), layer_jobs_s (wall clock of the
    layer jobs) and layer_jobs_busy_s (their summed job seconds: about what one worker would
    take). A stage measured here is also logged to W&B (a reused one was already). Raises
    SensitivityFailed when any job fails."""
    from .reports.console import is_quiet, log_file
    from .reports.progress import ThrottledLines

    # a line a minute in a log, in place on a terminal; every line where not quiet
    progress = progress or ThrottledLines(path=log_file("driver.log"), every_s=60.0 if is_quiet() else 0.0)
    exp, plan = sweep.exp, sweep.plan
    folder = sweep.run_dir / FOLDER
    key = stage_key(exp)
    stored = folder / RESULT_FILE
    if sweep.store.fetch(f"{FOLDER}/{RESULT_FILE}") or stored.is_file():
        kept = json.loads(stored.read_text())
        if kept.get("key") == key:
            print(f"[sweeper] sensitivity: kept from {stored} ({len(kept['ranking'])} layers)", flush=True)
            return kept
    metric, mode = exp.objective
    task_kwargs = _task_kwargs(exp)
    probe = probe_kwargs(exp)
    workers = sum(sweep.workers.values())
    t0 = time.monotonic()

    def spec(job: LayerJob, i: int):
        return plan.job_spec(job.recipe_kwargs(probe), f"sensitivity-{job.view}-{i}", task_kwargs=task_kwargs)

    # The listing job on every worker at once: each loads and exports the model now, side
    # by side, instead of the first layer job on each paying for it one after another.
    warm = run_layer_jobs(sweep, [(LayerJob("list"), spec(LayerJob("list"), i)) for i in range(workers)], workers)
    first = next((o for o in warm if o.error), warm[0])
    if first.error:
        raise SensitivityFailed(f"sensitivity: the job listing the layers failed: {first.error}")
    if len({json.dumps(o.metrics.get(metric)) for o in warm}) > 1:
        raise SensitivityFailed(f"sensitivity: the FP32 {metric} differs between workers: "
                                f"{sorted({o.metrics.get(metric) for o in warm})}")
    first_s = time.monotonic() - t0
    layers = list(first.info.get("layers") or [])
    if not layers:
        raise SensitivityFailed(f"sensitivity: recipe {exp.recipe} named no layers in its job info (see sweeper/sensitivity.py)")
    jobs = ([LayerJob("all")] if "all_but" in exp.sensitivity_views else []) + \
        [LayerJob(view, layer) for view in exp.sensitivity_views for layer in layers]
    print(f"[sweeper] sensitivity: {len(layers)} layers x {len(exp.sensitivity_views)} view(s) = {len(jobs)} "
          f"jobs on {workers} worker(s); FP32 {metric} = {first.metrics.get(metric)}", flush=True)
    outcomes = {LayerJob("list"): first.metrics}
    failed = []
    done, busy = 0, 0.0
    t_layers = time.monotonic()

    def ended(job, outcome):
        nonlocal done, busy
        done += 1
        busy += outcome.seconds
        if outcome.error:
            failed.append(f"{job.view} {job.layer}: {outcome.error}")
        else:
            outcomes[job] = outcome.metrics
        progress(f"[sweeper] sensitivity: {done}/{len(jobs)} jobs ({time.monotonic() - t0:.0f}s)")

    run_layer_jobs(sweep, [(job, spec(job, i + 1)) for i, job in enumerate(jobs)], workers, ended)
    if failed:
        raise SensitivityFailed(f"sensitivity: {len(failed)} of {len(jobs)} jobs failed; first: {failed[0]}")
    rows, facts = layer_rows(layers, outcomes, metric, mode)
    result = {"key": key, "model": exp.model, "recipe": exp.recipe, "probe": probe, "task": task_kwargs,
              "metric": metric, "mode": mode, "views": list(exp.sensitivity_views), **facts,
              "ranking": [r["layer"] for r in rows], "rows": rows, "columns": columns_of(rows, metric),
              "jobs": len(jobs) + workers, "workers": workers, "seconds": round(time.monotonic() - t0, 2),
              # the listing jobs (each worker loads and exports the model) take as long
              # whatever the workers; the layer jobs are what the pool spreads
              "first_job_s": round(first_s, 2), "layer_jobs_s": round(time.monotonic() - t_layers, 2),
              "layer_jobs_busy_s": round(busy, 2)}
    write_stage(result, folder)
    log_stage_to_wandb(result, exp.wandb_project, folder, f"{exp.name}-sensitivity")
    sweep.store.publish()
    finish = getattr(progress, "finish", progress)
    finish(f"[sweeper] sensitivity: done in {result['seconds']:.0f}s; most sensitive: "
           + ", ".join(result["ranking"][:3]) + f" (table: {folder / TABLE_FILE})")
    return result


def _task_kwargs(exp) -> dict:
    from .config import to_dict

    task = exp.sensitivity_task or exp.task
    return {k: v for k, v in to_dict(task).items() if k != "name"}


def run_layer_jobs(sweep, jobs: list, workers: int, ended=None) -> list:
    """Runs (LayerJob, JobSpec) pairs on the sweep's pool, `workers` at a time, in the order
    given (longest first: the all-quantized job), calling ended(job, outcome) as each ends
    (one call at a time); returns the outcomes in the order of `jobs`."""
    from .trial import run_pool_jobs

    return run_pool_jobs(sweep.pool, sweep.plan, [(sweep.plan.device, spec) for _, spec in jobs], workers,
                         ended=None if ended is None else lambda i, outcome: ended(jobs[i][0], outcome))


def columns_of(rows: list[dict], metric: str) -> list[str]:
    """Returns the table's columns for `rows`."""
    cols = ["rank", "layer", metric, "harm", "harm %"]
    if rows and f"{metric} all but it" in rows[0]:
        cols += [f"{metric} all but it", "recovered"]
    return cols


def write_stage(result: dict, folder: Path) -> None:
    """Writes the stage's JSON, its text table and its bar plot into `folder`."""
    from .reports.plots import plot_sensitivity
    from .reports.tracking import format_table

    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    head = (f"per-layer sensitivity: {result['recipe']} {json.dumps(result['probe'], default=str)} on one layer at a "
            f"time, {result['metric']} ({result['mode']}); FP32 {result['fp32']}"
            + (f", all layers quantized {result['all_quantized']}" if result["all_quantized"] is not None else "") + "\n"
            f"harm: how much worse than FP32 with that layer alone quantized ({result['metric']} units)\n")
    (folder / TABLE_FILE).write_text(head + format_table(result["rows"], result["columns"]) + "\n")
    plot_sensitivity(result["rows"], result["metric"], folder / PLOT_FILE)


def summary_entry(result: dict) -> dict:
    """Returns what a sweep's summary keeps of the stage: its table (rows and columns), the
    ranking, the FP32 and all-quantized metric, the plot's path in the run folder, and how
    long it took on how many workers."""
    keep = ("metric", "mode", "probe", "views", "fp32", "all_quantized", "ranking", "rows", "columns", "jobs",
            "workers", "seconds", "first_job_s", "layer_jobs_s", "layer_jobs_busy_s")
    return {**{k: result.get(k) for k in keep}, "plot": f"{FOLDER}/{PLOT_FILE}"}


def log_stage_to_wandb(result: dict, project: str, folder: Path, name: str) -> str | None:
    """Logs the stage to W&B (offline unless a key is configured): a run `name` with the
    table (key "sensitivity") and the bar plot (key "sensitivity_plot"); returns its folder,
    or None when W&B is disabled."""
    from .reports.wandb_report import log_table_run

    return log_table_run(project, "sensitivity", result["rows"], result["columns"], folder, name,
                         image=("sensitivity_plot", folder / PLOT_FILE))
