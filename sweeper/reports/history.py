"""Per-report metric histories of a sweep's trials, read back from Ray Tune's trial folders
(result.json: one JSON object per report)."""
from __future__ import annotations

import json
from pathlib import Path

from .summary_schema import is_metric_key


def trial_history(trial_dir: str | Path) -> list[dict]:
    """Returns every report of the trial whose Tune folder is `trial_dir`, oldest first, as
    {metric key: number} dicts (with "epoch" where the recipe reports it and
    "training_iteration", Tune's 1-based report count); [] when the folder or its
    result.json is missing or a line is not JSON."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return out
        keep = {k: v for k, v in row.items() if (is_metric_key(k) or k == "training_iteration")
                and isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append(keep)
    return out


def trial_folder(trial: dict, run_dir: str | Path | None) -> Path | None:
    """Returns the Tune folder of a summary's trial: its recorded path when it exists here,
    else the folder of the same name under `run_dir` (a results folder copied or synced from
    elsewhere); None when neither exists."""
    recorded = Path(trial["path"]) if trial.get("path") else None
    if recorded is not None and recorded.is_dir():
        return recorded
    if recorded is not None and run_dir is not None and (Path(run_dir) / recorded.name).is_dir():
        return Path(run_dir) / recorded.name
    return None


def sweep_histories(summary: dict, run_dir: str | Path | None) -> dict[str, list[dict]]:
    """Returns {trial_id: trial_history} for the summary's trials whose folders are found."""
    out = {}
    for t in summary.get("trials", []):
        folder = trial_folder(t, run_dir)
        if folder is not None:
            out[t["trial_id"]] = trial_history(folder)
    return out
