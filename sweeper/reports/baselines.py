"""Which FP32 result a trial is compared with. A sweep over one model and task has one
baseline (the summary's); a sweep whose trials span tasks (GLUE `--task all`) compares
each trial with its own task's FP32 trial (config recipe None)."""
from __future__ import annotations


def trial_task(trial: dict, record: dict):
    """Returns the task a trial was scored on (config "task", else the summary's evaluation
    settings' "task"), or None for tasks without one (perplexity)."""
    return trial["config"].get("task") or (record.get("eval_settings") or {}).get("task")


def task_baselines(record: dict) -> dict:
    """Returns {task: metrics of that task's first finished FP32 trial (config recipe None)}
    of a summary; {} when it has no such trial (its baseline is the summary's)."""
    out = {}
    for t in record["trials"]:
        if "recipe" in t["config"] and t["config"]["recipe"] is None and t["status"] == "TERMINATED":
            out.setdefault(trial_task(t, record), t["metrics"])
    return out


def baseline_of(trial: dict, record: dict, per_task: dict | None = None) -> dict:
    """Returns the FP32 metrics `trial` is compared with: its task's FP32 trial when the
    summary has one (`per_task`: task_baselines(record), passed to save recomputing it),
    else the summary's baseline ({} when it has none)."""
    per_task = task_baselines(record) if per_task is None else per_task
    return per_task.get(trial_task(trial, record)) or record.get("baseline") or {}
