"""The seed-shaped GLUE table: rows FP32 and best W8A8, columns the eight tasks and their
average, from a sweep summary whose trials carry `config["task"]` (or one task) and
`config["recipe"]` (None: the FP32 model)."""
from __future__ import annotations

import math

from .baselines import trial_task

COLUMNS = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "mrpc": "MRPC (F1)", "stsb": "STS-B (Pearson)",
           "qqp": "QQP (acc)", "mnli": "MNLI-m (acc)", "qnli": "QNLI (acc)", "rte": "RTE (acc)"}
AVG = "Avg"


def _score(t: dict):
    v = t.get("metrics", {}).get("glue_score")
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def best_by_task(summary: dict) -> dict:
    """Returns {task: {"fp32": trial or None, "w8a8": best finished quantized trial or None}}
    by glue_score (the task's seed column, percent)."""
    out: dict = {}
    for t in summary.get("trials", []):
        if t.get("status") != "TERMINATED" or _score(t) is None:
            continue
        task = trial_task(t, summary)
        row = out.setdefault(task, {"fp32": None, "w8a8": None})
        kind = "fp32" if t.get("config", {}).get("recipe", "aimet_qat") is None else "w8a8"
        if row[kind] is None or _score(t) > _score(row[kind]):
            row[kind] = t
    return out


def seed_table(summary: dict, missing: dict | None = None) -> tuple[list[dict], list[str]]:
    """Returns (rows, columns) of the seed-shaped table: rows "FP32" and "best W8A8", one
    column per GLUE task (the seed's metric, percent, or "n/a (reason)") and "Avg" (the mean
    over the tasks with a number in that row, "(n tasks)" beside it)."""
    from ..tasks.glue.metrics import glue_avg

    best = best_by_task(summary)
    missing = missing or {}
    rows = []
    for label, kind in (("FP32", "fp32"), ("best W8A8", "w8a8")):
        row, numbers = {"": label}, {}
        for task, col in COLUMNS.items():
            t = best.get(task, {}).get(kind)
            if t is not None:
                row[col] = round(_score(t), 2)
                numbers[task] = {"glue_score": _score(t)}
            elif task in missing:
                row[col] = f"n/a ({_short_reason(missing[task])})"
            else:
                row[col] = "n/a (not in this sweep)" if task not in best else "n/a (no finished trial)"
        avg, n = glue_avg({t: {_seed_key(t): m["glue_score"]} for t, m in numbers.items()})
        row[AVG] = f"{avg:.2f} ({n} tasks)" if avg is not None else "n/a"
        rows.append(row)
    return rows, [""] + list(COLUMNS.values()) + [AVG]


def _seed_key(task: str) -> str:
    from ..tasks.glue.metrics import SEED_COLUMNS

    return SEED_COLUMNS[task]


def _short_reason(reason: str) -> str:
    if "not found" in reason:
        return "no data here: " + reason.split(" not found")[0].removeprefix("GLUE ") + " missing"
    return reason[:80]


def mask_value_effect(summary: dict, pinned: dict) -> list[dict]:
    """Returns one row per task comparing the quantized trials that share the `pinned`
    recipe values and differ only in attention_mask_value (-6 vs None, the dtype minimum):
    their glue_score, and the FP32 score beside them."""
    best = best_by_task(summary)
    rows = {}
    for t in summary.get("trials", []):
        cfg = t.get("config", {})
        if cfg.get("recipe", "aimet_qat") is None or any(cfg.get(k) != v for k, v in pinned.items()):
            continue
        task = trial_task(t, summary)
        r = rows.setdefault(task, {"task": task})
        key = "mask -6" if cfg.get("attention_mask_value") == -6.0 else "mask dtype-min" \
            if cfg.get("attention_mask_value") is None else None
        if key:
            r[key] = None if _score(t) is None else round(_score(t), 2)
            r.setdefault("status", []).append(t.get("status"))
    for task, r in rows.items():
        fp = best.get(task, {}).get("fp32")
        r["FP32"] = None if fp is None else round(_score(fp), 2)
        if isinstance(r.get("mask -6"), float) and isinstance(r.get("mask dtype-min"), float):
            r["Δ (-6 minus dtype-min)"] = round(r["mask -6"] - r["mask dtype-min"], 2)
        r["status"] = "/".join(r.get("status", []))
    return [rows[t] for t in COLUMNS if t in rows]


def report_seed_table(summary_path: str, task: str = "all", pinned: dict | None = None,
                      project: str = "sweeper-roberta-glue") -> str:
    """Prints the seed-shaped table (and the attention_mask_value comparison when `pinned`
    is given) of the summary at `summary_path`, writes them beside it (glue_table.txt) and
    logs the table to W&B (offline unless configured); returns the printed text."""
    import json
    from pathlib import Path

    from .tracking import format_table, wandb_mode

    summary = json.loads(Path(summary_path).read_text())
    from ..tasks.glue.data import runnable_tasks

    _, missing = runnable_tasks(task) if task == "all" else ([task], {})
    rows, cols = seed_table(summary, missing)
    text = "GLUE dev, percent (seed-shaped table):\n" + format_table(rows, cols)
    eff, ecols = [], []
    if pinned is not None:
        eff = mask_value_effect(summary, pinned)
        if eff:
            ecols = ["task", "FP32", "mask -6", "mask dtype-min", "Δ (-6 minus dtype-min)", "status"]
            text += ("\n\nattention_mask_value, same recipe otherwise (" +
                     ", ".join(f"{k}={v}" for k, v in pinned.items()) + "):\n" + format_table(eff, ecols))
    print("\n" + text, flush=True)
    out = Path(summary_path).with_name(Path(summary_path).stem + ".glue_table.txt")
    out.write_text(text + "\n")
    from .report_page import add_table_to_report

    page = add_table_to_report(summary_path, "GLUE dev, percent (seed-shaped table)", rows, cols)
    if pinned is not None and eff:
        page = add_table_to_report(summary_path, "attention_mask_value, same recipe otherwise", eff, ecols,
                                   note=", ".join(f"{k}={v}" for k, v in pinned.items()))
    if page is not None:
        print(f"[sweeper] report page: {page}", flush=True)
    if wandb_mode() != "disabled":
        from .wandb_report import log_table_run

        where = log_table_run(project, "glue_table", rows, cols, Path(summary_path).parent,
                              name=f"{summary.get('experiment', 'glue')}-glue-table")
        print(f"[sweeper] GLUE table logged to W&B ({wandb_mode()}): {where}", flush=True)
    return text
