"""Sweep throughput: the sweeper's pooled workers against plain Ray Tune function trainables.

The same fixed list of trials is run twice per workload, each time on its own local Ray:

  ours   sweeper.sweep.run_experiment: Tune trials relay jobs to long-lived device workers
         that keep the loaded model, the tokenized data and the ONNX export across trials.
         Its wall time includes Ray start (as sweeper.sweep.init_ray starts it, but with
         address="local"), the worker pool start, the one FP32 baseline job the sweeper runs
         before every sweep, and the summary/Pareto plot it writes.
  plain  what a user writes without the sweeper: a Tune function trainable that, inside
         each trial, imports the stack, loads the model (`load_model`), loads and tokenizes
         the data, exports to ONNX (ONNX trials), quantizes with the same recipe function
         and evaluates with the same task function, under
         `tune.with_resources(..., {"cpu": 1})` (`{"gpu": 1}` with --device cuda) and
         torch.set_num_threads(1), so as many trials run at once as ours has workers.
         Its wall time runs from ray.init to the end of Tuner.fit.

Workloads:
  onnx   16 trials of the ONNX PTQ sweep on opt-ref (fp32, int8_qdq, QDQ + GPTQ 8-bit, GPTQ
         4-bit act-order, {rtn, gptq, hqq} x block {16, 32, 64, 128} at 4 bits), 16
         calibration blocks, WikiText2PPL(context_length=128, stride=128, max_tokens=16384).
  qat    8 trials of the AIMET QAT sweep on gpt2-ref (1 epoch of 10 steps, 2 calibration
         batches, seq_len 128, batch 8; lr / quant_scheme / output_bw varied),
         WikiText2PPL(max_tokens=8192), FIFO scheduler (no early stopping).

Printed, per workload and runner: trials, wall s, trials/hour, device busy fraction (ours:
sum of the workers' busy_s / (workers x wall); plain: sum of the trials' quantize+evaluate
seconds / (concurrency x wall)), the share of a plain trial spent importing, loading,
tokenizing and exporting, median and p90 per-trial overhead (ours: job_start_overhead_s,
from the trial function's start to its job running on a worker; plain: from the trial
function's start to the start of its quantize step), the ratio of trials/hour, and whether
both runners gave the same wikitext2_ppl per trial config. Below the table: where a plain
trial's time goes (mean seconds from Tune creating the trial to its function running, i.e.
the fresh trial actor's start, then imports, load_model, data, export, quantize+evaluate),
and ours' worker counters (jobs, model loads, ONNX exports, data builds).

Neither overhead number includes the start of the Tune trial actor itself (Tune starts a
fresh actor process per trial unless reuse_actors is set); for plain it is printed below
the table; for ours it cannot be measured from outside run_experiment, but it shows in the
wall time.

    SWEEPER_CACHE_DIR=$PWD/.sweeper-cache SWEEPER_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 WANDB_MODE=disabled \\
        python benchmarks/sweep_throughput.py --workload both --device cpu --out results/sweep_throughput.json
    python benchmarks/sweep_throughput.py --smoke     # 4 onnx + 2 qat trials, a few minutes

Reference models (opt-ref, gpt2-ref) must be built already (`sweeper zoo build ...`); this
script never builds them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

METRIC = "wikitext2_ppl"

# ---- the workloads ------------------------------------------------------------------------

ONNX_TRIALS = [
    {"algorithm": "fp32", "bits": None, "block_size": None},
    {"algorithm": "int8_qdq", "bits": 8, "block_size": None},
    {"algorithm": "rtn", "bits": 4, "block_size": 32},
    {"algorithm": "gptq", "bits": 4, "block_size": 128},
    # the smoke run stops here
    {"algorithm": "gptq", "bits": 8, "block_size": None},  # QDQ + GPTQ 8-bit
    {"algorithm": "gptq", "bits": 4, "block_size": 128, "act_order": True},
    {"algorithm": "rtn", "bits": 4, "block_size": 16},
    {"algorithm": "rtn", "bits": 4, "block_size": 64},
    {"algorithm": "rtn", "bits": 4, "block_size": 128},
    {"algorithm": "gptq", "bits": 4, "block_size": 16},
    {"algorithm": "gptq", "bits": 4, "block_size": 32},
    {"algorithm": "gptq", "bits": 4, "block_size": 64},
    {"algorithm": "hqq", "bits": 4, "block_size": 16},
    {"algorithm": "hqq", "bits": 4, "block_size": 32},
    {"algorithm": "hqq", "bits": 4, "block_size": 64},
    {"algorithm": "hqq", "bits": 4, "block_size": 128},
]

QAT_TRIALS = [
    {"quant_scheme": "range_learning_tf", "lr": 1e-4, "output_bw": 8},
    {"quant_scheme": "tf", "lr": 1e-4, "output_bw": 16},
    # the smoke run stops here
    {"quant_scheme": "range_learning_tf", "lr": 1e-3, "output_bw": 8},
    {"quant_scheme": "tf", "lr": 1e-4, "output_bw": 8},
    {"quant_scheme": "tf_enhanced", "lr": 1e-4, "output_bw": 8},
    {"quant_scheme": "tf_enhanced", "lr": 3e-4, "output_bw": 16},
    {"quant_scheme": "percentile", "lr": 5e-5, "output_bw": 8},
    {"quant_scheme": "range_learning_tf_enhanced", "lr": 3e-4, "output_bw": 8},
]


def workload(name: str, smoke: bool) -> dict:
    """Returns the workload's model, recipe, fixed recipe fields, task kwargs and trial list."""
    if name == "onnx":
        return {"name": "onnx", "model": "opt-ref", "recipe": "onnx_ptq",
                "fixed": {"calibration_samples": 16, "calibration_method": "minmax"},
                "task": {"split": "test", "context_length": 128, "stride": 128, "batch_size": 8, "max_tokens": 16_384},
                "trials": ONNX_TRIALS[:4] if smoke else ONNX_TRIALS}
    return {"name": "qat", "model": "gpt2-ref", "recipe": "aimet_qat",
            "fixed": {"epochs": 1, "steps_per_epoch": 10, "calibration_batches": 2, "seq_len": 128, "batch_size": 8,
                      "param_bw": 8, "input_quantization": True, "clamp_value": 30.0, "weight_decay": 0.0},
            "task": {"split": "test", "batch_size": 8, "max_tokens": 8_192},
            "trials": QAT_TRIALS[:2] if smoke else QAT_TRIALS}


def complete_trials(wl: dict) -> list[dict]:
    """Returns the workload's trials, each with every key any trial sets (missing ones at the
    recipe config's default), so that each trial's Tune config is exactly that dict."""
    import dataclasses

    from sweeper.registry import RECIPES, ensure_builtin_registered

    ensure_builtin_registered()
    defaults = {f.name: f.default for f in dataclasses.fields(RECIPES.get(wl["recipe"]).config_cls)}
    keys = sorted({k for t in wl["trials"] for k in t})
    return [{k: t.get(k, defaults[k]) for k in keys} for t in wl["trials"]]


def trial_space(trials: list[dict]) -> dict:
    """Returns a param_space holding every trial key, as constants (the first trial's values).

    Ray 2.60's BasicVariantGenerator refuses a points_to_evaluate key that the param_space
    lacks (KeyError in _get_preset_variants), so an empty space with fixed trials cannot run;
    a `sample_from` domain breaks too (its placeholder is overwritten by the preset value,
    then resolve_placeholders indexes that value); a `tune.choice` of each key's values would
    fail the sweeper's validate_space, which builds every combination (fp32 with 4 bits).
    Constants work: each preset value replaces the constant (Tune logs a warning for each one
    that differs, silenced below), and the first trial's values validate."""
    import logging

    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    return {k: trials[0][k] for k in trials[0]}


def config_key(config: dict) -> str:
    """Returns a canonical string for a trial config (the key results are matched on)."""
    return json.dumps({k: config[k] for k in sorted(config)}, default=str)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def start_local_ray(device: str, *, sweeper_trial: bool = False, concurrency: int | None = None) -> None:
    """Starts a fresh local Ray for one runner (address="local": never another Ray found on
    this machine, e.g. one whose /tmp/ray/ray_current_cluster a `ray start` left).

    sweeper_trial: as sweeper.sweep.init_ray starts it (all local CPUs, plus the custom
    `sweeper_trial` resource that the sweeper's relay trials hold instead of CPU); run_experiment
    then finds Ray initialised and uses it. Else: `concurrency` CPUs (GPUs with cuda), so
    that plain trials holding one each run `concurrency` at a time."""
    import ray

    from sweeper.data.wikitext import pin_data_dirs
    from sweeper.devices.kinds import local_cpu_count
    from sweeper.sweep import TRIAL_RESOURCE

    pin_data_dirs()  # before Ray starts: its workers inherit this environment
    opts = {"address": "local", "include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if sweeper_trial:
        ray.init(num_cpus=local_cpu_count(), resources={TRIAL_RESOURCE: 10_000}, configure_logging=True, **opts)
    elif device == "cuda":
        ray.init(num_gpus=concurrency, **opts)
    else:
        ray.init(num_cpus=concurrency, **opts)


# ---- runner (a): the sweeper ------------------------------------------------------------


def run_ours(wl: dict, device: str, workers: int, scratch: Path) -> dict:
    """Runs the workload with sweeper.sweep.run_experiment; returns the runner's record."""
    import ray

    from sweeper.experiment import Experiment
    from sweeper.sweep import run_experiment
    from sweeper.tasks import WikiText2PPL

    trials = complete_trials(wl)
    exp = Experiment(name=f"bench_{wl['name']}", model=wl["model"], recipe=wl["recipe"], task=WikiText2PPL(**wl["task"]),
                     search_space=trial_space(trials), fixed=dict(wl["fixed"]), trials=trials, device=device,
                     workers=workers, num_samples=0, scheduler="fifo", max_failures=0, seed=0,
                     wandb_project="sweeper-bench")
    t0 = time.time()
    start_local_ray(device, sweeper_trial=True)
    try:
        res = run_experiment(exp, results_dir=scratch / "ours", verbose=0)
        wall = time.time() - t0
    finally:
        ray.shutdown()
    s = res.summary
    n_workers = len(s["workers"])
    busy = sum(w.get("busy_s", 0.0) for w in s["workers"].values())
    trials = []
    for t in s["trials"]:
        m = t["metrics"]
        trials.append({"config": t["config"], "status": t["status"], METRIC: m.get(METRIC),
                       "overhead_s": m.get("job_start_overhead_s"), "worker_id": m.get("worker_id"),
                       "error": t.get("error")})
    done = [t for t in trials if t["status"] == "TERMINATED"]
    over = [t["overhead_s"] for t in done if isinstance(t["overhead_s"], (int, float))]
    return {"runner": "ours", "trials": len(trials), "done": len(done), "wall_s": wall,
            "sweep_s_after_pool_start": s.get("elapsed_s"), "concurrency": n_workers,
            "trials_per_hour": 3600.0 * len(done) / wall, "busy_s": busy, "busy_fraction": busy / (n_workers * wall),
            "overhead_median_s": _pct(over, 50), "overhead_p90_s": _pct(over, 90),
            "baseline": {METRIC: s["baseline"].get(METRIC)}, "workers": s["workers"],
            "job_start_wait_s": s.get("job_start_wait_s"), "per_trial": trials}


# ---- runner (b): plain Ray Tune -----------------------------------------------------------


def plain_trial(config: dict, plan: dict) -> None:
    """A plain Tune function trainable: everything a trial needs is built inside the trial."""
    t_entry = time.time()
    import torch

    torch.set_num_threads(1)  # as the sweeper's workers do: one core per concurrent trial
    from ray import tune

    from sweeper.data import load_training_text
    from sweeper.devices.kinds import KINDS
    from sweeper.jobs import JobContext
    from sweeper.models.loading import load_model
    from sweeper.recipes.calibration import token_blocks
    from sweeper.registry import RECIPES, TASKS, ensure_builtin_registered
    from sweeper.tasks.perplexity import model_max_positions, tokenize_split

    ensure_builtin_registered()
    recipe = RECIPES.get(plan["recipe"])
    task = TASKS.get("wikitext2_ppl")
    recipe_cfg = recipe.config_cls(**{**plan["fixed"], **config})
    task_cfg = task.config_cls(**plan["task"])
    t_import = time.time()

    device = torch.device(plan["device"])
    loaded = load_model(plan["model"], device=str(device), build_missing=False, log=lambda s: None)
    t_load = time.time()

    # Data: the test split for the task, the training text and its token blocks for the
    # recipe. The recipe and task functions look them up through ctx.cached (a plain dict
    # here, one per trial); any build they still trigger later is timed and counted as data.
    cache: dict = {}
    lazy = {"s": 0.0}

    def cached(key, build):
        if key not in cache:
            t = time.time()
            cache[key] = build()
            lazy["s"] += time.time() - t
        return cache[key]

    timing = {"report_s": 0.0}
    t_q0 = [None]

    def report(metrics: dict, artifacts: dict | None = None):
        t = time.time()
        from sweeper.trial import flatten_metrics  # the sweep's own flattening: same keys as ours

        m = flatten_metrics(metrics)
        m.update(plain_import_s=t_import - t_entry, plain_load_s=t_load - t_import, plain_data_s=t_data - t_load,
                 plain_export_s=t_export - t_data, plain_lazy_data_s=lazy["s"], plain_overhead_s=t_q0[0] - t_entry,
                 plain_work_s=t - t_q0[0] - timing["report_s"] - lazy["s"], plain_report_s=timing["report_s"],
                 plain_entry_ts=t_entry, plain_end_ts=t)
        if artifacts:
            with tempfile.TemporaryDirectory(prefix="plain-artifacts-") as tmp:
                for name, data in artifacts.items():
                    (Path(tmp) / name).write_bytes(data)
                tune.report(m, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(m)
        timing["report_s"] += time.time() - t

    workdir = tempfile.mkdtemp(prefix="plain-trial-")
    try:
        ctx = JobContext(device=device, tokenizer=loaded.tokenizer, seed=plan["seed"], report=report, cached=cached,
                         log=lambda s: print(f"[plain {plan['recipe']}] {s}", flush=True), kind=KINDS[plan["device"]],
                         workdir=workdir)
        ctx.evaluate = lambda m: task.fn(m, task_cfg, ctx)
        tok = loaded.tokenizer
        key = ("wikitext2-tokens", getattr(tok, "name_or_path", id(tok)), len(tok), task_cfg.dataset, task_cfg.split)
        cache[key] = tokenize_split(tok, task_cfg.dataset, task_cfg.split)
        ctx.train_text = load_training_text()
        if plan["recipe"] == "onnx_ptq":
            seq_len = recipe_cfg.calibration_seq_len or min(model_max_positions(loaded.model), 512)
            if recipe_cfg.needs_calibration:
                token_blocks(ctx, seq_len, "benchmark")
        else:
            token_blocks(ctx, recipe_cfg.seq_len or model_max_positions(loaded.model), "benchmark")
        lazy["s"] = 0.0
        t_data = time.time()

        model = loaded.model
        if plan["model_format"] == "onnx":
            from sweeper.models.onnx_export import export_causal_lm

            model = export_causal_lm(loaded.model, Path(workdir) / "export", opset=plan["onnx_opset"],
                                     source_key=loaded.content_key, log=ctx.log)
        t_export = time.time()

        t_q0[0] = time.time()
        torch.manual_seed(plan["seed"])
        q = recipe.fn(model, recipe_cfg, ctx)
        if not q.reported:
            report(ctx.evaluate(q.model), q.artifacts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_plain(wl: dict, device: str, concurrency: int, scratch: Path) -> dict:
    """Runs the workload as plain Tune function trainables; returns the runner's record."""
    import ray
    from ray import tune
    from ray.tune import Callback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweeper.registry import RECIPES, ensure_builtin_registered

    ensure_builtin_registered()
    model_format = getattr(RECIPES.get(wl["recipe"]).config_cls, "model_format", "torch")
    plan = {"model": wl["model"], "recipe": wl["recipe"], "fixed": dict(wl["fixed"]), "task": dict(wl["task"]),
            "device": device, "seed": 0, "model_format": model_format, "onnx_opset": 18}
    started: dict[str, float] = {}

    class TrialAdded(Callback):
        """Notes when Tune creates each trial (before its actor process is started)."""

        def _seen(self, trials):
            now = time.time()
            for t in trials:
                started.setdefault(t.trial_id, now)

        def on_step_begin(self, iteration, trials, **info):
            self._seen(trials)

        def on_step_end(self, iteration, trials, **info):
            self._seen(trials)

    t0 = time.time()
    start_local_ray(device, concurrency=concurrency)
    res = {"gpu": 1} if device == "cuda" else {"cpu": 1}
    trainable = tune.with_resources(tune.with_parameters(plain_trial, plan=plan), res)
    trials = complete_trials(wl)
    tuner = tune.Tuner(
        trainable, param_space=trial_space(trials),
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=FIFOScheduler(), num_samples=len(wl["trials"]),
                                    search_alg=BasicVariantGenerator(random_state=0, max_concurrent=concurrency,
                                                                     points_to_evaluate=trials)),
        run_config=tune.RunConfig(name=f"plain_{wl['name']}", storage_path=str(scratch / "plain"), verbose=0,
                                  callbacks=[TrialAdded()], failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    try:
        grid = tuner.fit()
        wall = time.time() - t0
    finally:
        ray.shutdown()
    trials = []
    for r in grid:
        m = dict(r.metrics or {})
        tid = m.get("trial_id") or Path(r.path).name
        rec = {"config": dict(r.config or {}), "status": "ERROR" if r.error else "TERMINATED", METRIC: m.get(METRIC),
               "error": str(r.error).splitlines()[-1][:300] if r.error else None}
        for k in ("import", "load", "data", "export", "lazy_data", "overhead", "work", "report"):
            rec[f"{k}_s"] = m.get(f"plain_{k}_s")
        if "plain_entry_ts" in m:
            rec["total_s"] = m["plain_end_ts"] - m["plain_entry_ts"]
            rec["spawn_s"] = m["plain_entry_ts"] - started[tid] if tid in started else None
        trials.append(rec)
    done = [t for t in trials if t["status"] == "TERMINATED" and t.get("total_s")]
    setup = [(t["import_s"] + t["load_s"] + t["data_s"] + t["export_s"] + t["lazy_data_s"]) / t["total_s"] for t in done]
    work = sum(t["work_s"] for t in done)
    over = [t["overhead_s"] for t in done]

    def mean(key):
        vals = [t[key] for t in done if t.get(key) is not None]
        return statistics.fmean(vals) if vals else None
    return {"runner": "plain", "trials": len(trials), "done": len(done), "wall_s": wall, "concurrency": concurrency,
            "trials_per_hour": 3600.0 * len(done) / wall, "busy_s": work, "busy_fraction": work / (concurrency * wall),
            "overhead_median_s": _pct(over, 50), "overhead_p90_s": _pct(over, 90),
            "setup_fraction_median": _pct(setup, 50), "setup_fraction_min": min(setup, default=None),
            "setup_fraction_max": max(setup, default=None),
            "mean_breakdown_s": {k: mean(f"{k}_s") for k in ("spawn", "import", "load", "data", "export", "lazy_data",
                                                              "work", "report", "total")},
            "per_trial": trials}


# ---- comparison and output -------------------------------------------------------------------


def compare(ours: dict, plain: dict) -> dict:
    """Returns how the two runners' per-config metric values compare."""
    a = {config_key(t["config"]): t[METRIC] for t in ours["per_trial"]}
    b = {config_key(t["config"]): t[METRIC] for t in plain["per_trial"]}
    rows, max_rel, exact = [], 0.0, 0
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        ok = isinstance(va, float) and isinstance(vb, float) and math.isfinite(va) and math.isfinite(vb)
        rel = abs(va - vb) / abs(vb) if ok else None
        if ok:
            max_rel = max(max_rel, rel)
            exact += va == vb
        rows.append({"config": json.loads(k), "ours": va, "plain": vb, "rel_diff": rel})
    matched = sum(r["rel_diff"] is not None for r in rows)
    return {"configs": len(rows), "matched": matched, "exact_equal": exact, "max_rel_diff": max_rel if matched else None,
            "ratio_trials_per_hour": ours["trials_per_hour"] / plain["trials_per_hour"] if plain["trials_per_hour"] else None,
            "rows": rows}


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(results: dict) -> str:
    """Returns the side-by-side table (and the per-workload comparison lines) as text."""
    head = ["workload", "runner", "trials", "wall s", "trials/h", "busy", "plain setup share",
            "overhead median s", "overhead p90 s"]
    rows = []
    for wname, w in results["workloads"].items():
        for r in (w["ours"], w["plain"]):
            share = (f"{r['setup_fraction_median']:.0%} ({r['setup_fraction_min']:.0%}-{r['setup_fraction_max']:.0%})"
                     if r["runner"] == "plain" and r.get("setup_fraction_median") is not None else "-")
            rows.append([wname, r["runner"] + (f" x{r['concurrency']}"), f"{r['done']}/{r['trials']}", _f(r["wall_s"], ".1f"),
                         _f(r["trials_per_hour"], ".0f"), _f(r["busy_fraction"], ".0%"), share,
                         _f(r["overhead_median_s"], ".3f"), _f(r["overhead_p90_s"], ".3f")])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(n) for h, n in zip(head, widths)), "  ".join("-" * n for n in widths)]
    out += ["  ".join(c.ljust(n) for c, n in zip(r, widths)) for r in rows]
    out.append("")
    for wname, w in results["workloads"].items():
        c = w["compare"]
        out.append(f"{wname}: ours/plain trials per hour = {_f(c['ratio_trials_per_hour'], '.2f')}x; {METRIC} per config: "
                   f"{c['matched']}/{c['configs']} compared, {c['exact_equal']} exactly equal, "
                   f"max relative difference {_f(c['max_rel_diff'], '.3g')}")
        bd = w["plain"]["mean_breakdown_s"]
        out.append(f"{wname}: plain trial, mean s: Tune trial created -> trial function running {_f(bd['spawn'], '.2f')}, "
                   f"imports {_f(bd['import'], '.2f')}, "
                   f"load_model {_f(bd['load'], '.2f')}, data {_f(bd['data'], '.2f')}, ONNX export {_f(bd['export'], '.2f')}, "
                   f"quantize+evaluate {_f(bd['work'], '.2f')}, tune.report {_f(bd['report'], '.2f')} "
                   f"(total in trial {_f(bd['total'], '.2f')})")
        o = w["ours"]
        counters = {k: sum(wk.get(k, 0) for wk in o["workers"].values())
                    for k in ("jobs_started", "model_loads", "onnx_exports", "data_builds")}
        out.append(f"{wname}: ours: {o['concurrency']} workers, {counters['jobs_started']} jobs (incl. the FP32 baseline), "
                   f"{counters['model_loads']} model loads, {counters['onnx_exports']} ONNX exports, "
                   f"{counters['data_builds']} data builds; sum busy {o['busy_s']:.1f}s; "
                   f"Ray + pool start {o['wall_s'] - (o.get('sweep_s_after_pool_start') or 0):.1f}s, then "
                   f"{o.get('sweep_s_after_pool_start')}s from the baseline job to the written summary")
    return "\n".join(out)


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {}
    for pkg in ("ray", "torch", "transformers", "onnx", "onnxruntime", "aimet-torch", "numpy"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = None
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "versions": vers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("onnx", "qat", "both"), default="both")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--workers", type=int, default=None, help="concurrent trials (default: 2 on cpu, the GPU count on cuda)")
    ap.add_argument("--smoke", action="store_true", help="4 onnx + 2 qat trials")
    ap.add_argument("--out", default="results/sweep_throughput.json", help="results JSON (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the Tune result folders (printed) instead of deleting them")
    args = ap.parse_args(argv)

    if os.environ.pop("RAY_ADDRESS", None):
        print("[bench] RAY_ADDRESS ignored: both runners start their own local Ray", flush=True)
    workers = args.workers
    if workers is None:
        if args.device == "cuda":
            import torch

            workers = torch.cuda.device_count()
        else:
            workers = 2
    if workers < 1:
        raise SystemExit("need at least one worker (no GPU found?)")
    names = ("onnx", "qat") if args.workload == "both" else (args.workload,)
    scratch = Path(tempfile.mkdtemp(prefix="sweep-throughput-"))
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args), "workers": workers,
               "machine": machine_info(), "workloads": {}}
    t_all = time.time()
    try:
        for name in names:
            wl = workload(name, args.smoke)
            print(f"[bench] {name}: ours ({len(wl['trials'])} trials, {workers} workers)", flush=True)
            ours = run_ours(wl, args.device, workers, scratch)
            print(f"[bench] {name}: ours done in {ours['wall_s']:.1f}s; plain Ray Tune, concurrency {ours['concurrency']}",
                  flush=True)
            plain = run_plain(wl, args.device, ours["concurrency"], scratch)
            print(f"[bench] {name}: plain done in {plain['wall_s']:.1f}s", flush=True)
            results["workloads"][name] = {"workload": {k: v for k, v in wl.items()}, "ours": ours, "plain": plain,
                                          "compare": compare(ours, plain)}
    finally:
        if args.keep:
            print(f"[bench] Tune results kept in {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    results["total_s"] = time.time() - t_all
    table = render(results)
    results["table"] = table
    print("\n" + table + f"\n\n(total {results['total_s']:.0f}s)", flush=True)
    for name, w in results["workloads"].items():
        for r in w["compare"]["rows"]:
            if r["rel_diff"] is None or r["rel_diff"] > 0:
                print(f"[bench] {name} differs: {r['config']}: ours {r['ours']} plain {r['plain']}", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))
        print(f"[bench] results written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
