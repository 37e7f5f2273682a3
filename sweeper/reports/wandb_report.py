"""One sweep-level W&B run per sweep: the leaderboard table and the Pareto plot."""
from __future__ import annotations

import math
from pathlib import Path

TABLE_KEY, PLOT_KEY = "leaderboard", "pareto"


def _cell(v):
    # W&B tables are JSON: NaN/inf would not round-trip, lists/dicts would need a schema
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple, dict)):
        return str(v)
    return v


def log_leaderboard_run(project: str, rows: list[dict], columns: list[str], plot_path: str | Path | None,
                        run_dir: str | Path, name: str) -> str | None:
    """Logs a run named `name` in `project` (job_type "leaderboard") holding a wandb.Table
    of `rows` (key "leaderboard", one row per trial, or per configuration with its mean and
    "± metric" std columns when trials repeat over seeds; `columns` in order) and the PNG at
    `plot_path` as a wandb.Image (key "pareto"). Offline unless a W&B key is configured;
    WANDB_MODE=disabled logs nothing. Returns the run's folder (wandb/offline-run-* or
    wandb/run-* under `run_dir`), or None when disabled."""
    from .tracking import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return None
    if not isinstance(project, str) or not project.strip():
        from ..errors import ConfigError

        raise ConfigError("leaderboard W&B run", "project", project, "a W&B project name")
    import wandb

    wandb_dir = Path(run_dir) / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    # `sweeper_leaderboard` lets a leaderboard that reads this project skip this run
    run = wandb.init(project=project, name=name, job_type="leaderboard", dir=str(run_dir), mode=mode,
                     config={"sweeper_leaderboard": True, "columns": list(columns)}, reinit="create_new")
    try:
        table = wandb.Table(columns=list(columns), data=[[_cell(r.get(c)) for c in columns] for r in rows],
                            allow_mixed_types=True)
        payload = {TABLE_KEY: table}
        if plot_path is not None and Path(plot_path).is_file():
            payload[PLOT_KEY] = wandb.Image(str(plot_path), caption=Path(plot_path).name)
        run.log(payload)
        # a row is a trial, or (repeats over seeds) a configuration listing its trial_ids
        run.summary["n_trials"] = sum(len(r.get("trial_ids") or [r]) for r in rows)
        if "n" in columns:
            run.summary["n_configurations"] = len(rows)
        out = str(Path(run.dir).parent)  # run.dir is the run's files/ folder
    finally:
        run.finish()
    if mode == "offline":
        wait_until_written(Path(out))
    return out


def wait_until_written(run_path: Path, timeout_s: float = 30.0) -> bool:
    """Returns True once the offline run file ends with its exit record (False after
    `timeout_s` seconds). wandb-core writes the file asynchronously: finish() can return
    while it holds only its header, and a caller reading it right away would see nothing."""
    import time

    from .wandb_offline import iter_records

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for f in run_path.glob("run-*.wandb"):
                if any(rec.WhichOneof("record_type") == "exit" for rec in iter_records(f)):
                    return True
        except Exception:  # a half-written chunk: read again
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def log_table_run(project: str, key: str, rows: list[dict], columns: list[str], run_dir: str | Path,
                  name: str, image: tuple[str, Path] | None = None) -> str | None:
    """Logs a run named `name` in `project` (job_type "table") holding one wandb.Table of
    `rows` under `key` (e.g. the seed-shaped GLUE table) and, with `image` (key, PNG path),
    that picture. Offline unless a W&B key is configured; WANDB_MODE=disabled logs nothing.
    Returns the run's folder, or None."""
    from .tracking import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb

    Path(run_dir, "wandb").mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=name, job_type="table", dir=str(run_dir), mode=mode,
                     config={"sweeper_leaderboard": True, "columns": list(columns)}, reinit="create_new")
    try:
        table = wandb.Table(columns=list(columns), data=[[_cell(r.get(c)) for c in columns] for r in rows],
                            allow_mixed_types=True)
        payload = {key: table}
        if image is not None and Path(image[1]).is_file():
            payload[image[0]] = wandb.Image(str(image[1]), caption=Path(image[1]).name)
        run.log(payload)
        out = str(Path(run.dir).parent)
    finally:
        run.finish()
    if mode == "offline":
        wait_until_written(Path(out))
    return out
