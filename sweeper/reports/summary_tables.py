"""The sweep's own tables: the trial table with Δ vs FP32, the per-configuration table of a
repeated sweep, the quality-vs-size front, and the per-device rows of device sweeps."""
from __future__ import annotations

import json

from ..config import is_finite_number as _finite
from .baselines import baseline_of, task_baselines
from .tracking import format_table


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
    from ..noise import as_estimate
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
    from ..noise import as_estimate, format_estimate, tie_mark

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


def config_cell(value):
    """Returns a config value as a table shows it: a list of more than 3 items (a layer
    ranking) as "[N items]", anything else as it is."""
    return f"[{len(value)} items]" if isinstance(value, (list, tuple)) and len(value) > 3 else value


def summary_rows(summary: dict) -> tuple[str, list[dict], list[str], str]:
    """Returns (caption, rows, columns, legend) of the trial table: the FP32 baseline row,
    then one row per trial (sorted as the summary is: by the objective) with Δ vs the FP32
    baseline (its own task's) and, where trials report model_size_mb, the size and a '*' on
    the quality-vs-size front; failed trials carry their error."""
    metric = summary["metric"]
    base = summary["baseline"].get(metric)
    keys = sorted({k for t in summary["trials"] for k in t["config"]})
    sized = any("model_size_mb" in t["metrics"] for t in summary["trials"])
    front = set(summary.get("pareto_size") or [])
    per_task = task_baselines(summary)
    # trials spanning tasks are compared with their own task's FP32 trial; the sweep's
    # baseline is only its first task's, and the row says so
    label = "fp32 baseline" + (f" ({summary.get('eval_settings', {}).get('task')})" if len(per_task) > 1 else "")
    rows = [{"trial": label, metric: base, "status": "-", "size MB": summary["baseline"].get("model_size_mb", "")}]
    for t in summary["trials"]:
        v = t["metrics"].get(metric)
        base = baseline_of(t, summary, per_task).get(metric)
        row = {"trial": t["trial_id"], "status": t["status"], metric: v, **{k: config_cell(c) for k, c in t["config"].items()},
               "epoch": t["metrics"].get("epoch", ""), "size MB": t["metrics"].get("model_size_mb", ""),
               "front": "*" if t["trial_id"] in front else ""}
        if _finite(v) and _finite(base):
            row["Δ vs fp32"] = v - base
            row["Δ vs fp32 %"] = 100.0 * (v - base) / base if base else None  # a 0 baseline (MCC) has no ratio
        if t["status"] == "ERROR":
            row["error"] = t.get("error", "")[:80]
        if "feasible" in t:
            row["feasible"] = "yes" if t["feasible"] else "no"
            row["pick"] = "*" if t["trial_id"] == summary.get("pick") else ""
        rows.append(row)
    if sized:
        cols = ["trial", "status"] + keys + ["size MB", metric, "Δ vs fp32", "Δ vs fp32 %", "front"]
    else:
        cols = ["trial", "status", metric, "Δ vs fp32 %", "epoch"] + keys
    goals = bool(summary.get("constraints")) or len(summary.get("objectives") or []) > 1
    if goals:
        cols[2:2] = ["feasible", "pick"]
    if any("error" in r for r in rows):
        cols.append("error")
    settings = summary.get("eval_settings", {})
    caption = ", ".join(f"{k}={v}" for k, v in settings.items() if k in ("dataset", "split", "context_length", "stride", "max_tokens", "dtype"))
    legend = "* = on the quality-vs-size Pareto front; size MB = graph plus external data, 2**20 bytes" if sized else ""
    if goals:
        legend += ("\n" if legend else "") + (
            f"feasible: meets {'; '.join(summary.get('constraints') or []) or 'no constraint'}; pick (*): the best "
            f"feasible trial on {(summary.get('objectives') or [{}])[0].get('metric', metric)}; feasible front over "
            f"{', '.join(o['metric'] + ' ' + o['mode'] for o in summary.get('objectives') or [])}: "
            f"{', '.join(summary.get('feasible_front') or []) or 'none'}; stopped because {summary.get('stopped_because')}")
    return f"{summary['experiment']}: {metric} ({summary['mode']}) on {caption}", rows, cols, legend


def summary_table(summary: dict) -> str:
    """Returns summary_rows as plain text (the per-configuration table first when trials
    repeat under several seeds)."""
    caption, rows, cols, legend = summary_rows(summary)
    per_config = configuration_table(summary) + "\n\nruns:\n" if summary.get("configurations") else ""
    return caption + "\n" + per_config + format_table(rows, cols) + ("\n" + legend if legend else "")


def rerun_table(record: dict, new_record: dict) -> str:
    """Returns the table of a rerun (two trial records, record.trial_record): every number
    both runs report (the objective first), the original, the rerun and their difference;
    then the package versions and git commit that differ between the two runs, if any."""
    old, new = record["metrics"], new_record["metrics"]
    skip = ("worker_id", "training_iteration", "timestamp")
    keys = [record["metric"]] + sorted(k for k in old if k != record["metric"] and k in new and k not in skip
                                       and _finite(old[k]) and _finite(new.get(k)))
    rows = [{"metric": k, "original": old.get(k), "rerun": new.get(k),
             "Δ": new[k] - old[k] if _finite(old.get(k)) and _finite(new.get(k)) else None} for k in keys]
    text = (f"rerun of {record['trial_id']} ({record['experiment']}) as {new_record['trial_id']}, "
            f"status {new_record['status']}:\n" + format_table(rows, ["metric", "original", "rerun", "Δ"]))
    before = {**(record.get("versions") or {}), "git": (record.get("origin") or {}).get("git_commit")}
    after = {**(new_record.get("versions") or {}), "git": (new_record.get("origin") or {}).get("git_commit")}
    changed = {k: (before.get(k), after.get(k)) for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)}
    if changed:
        text += "\nversions that differ (original -> rerun): " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    return text
