"""Quiet console mode: what a sweep's libraries would print besides the sweep's own lines
(Python warnings, transformers' advisories, W&B's run banners, workers' per-job lines)
goes to the sweep's logs folder instead. Workers read the mode from the environment the
driver hands them (`QUIET_ENV`, `LOG_DIR_ENV`)."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

QUIET_ENV = "SWEEPER_CONSOLE"  # "quiet": workers keep their per-job lines in LOG_DIR_ENV
LOG_DIR_ENV = "SWEEPER_LOG_DIR"
# set for the driver and every worker of a quiet sweep (W&B banners, transformers advisories)
QUIET_LIBRARY_ENV = {"WANDB_SILENT": "true", "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def is_quiet() -> bool:
    """Returns whether this process belongs to a quiet sweep."""
    return os.environ.get(QUIET_ENV) == "quiet"


def log_file(name: str) -> Path | None:
    """Returns the quiet sweep's log file `name` in its logs folder (created), or None when
    the sweep is not quiet or has no logs folder."""
    folder = os.environ.get(LOG_DIR_ENV)
    if not is_quiet() or not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / name


def send_warnings_to(path: Path) -> None:
    """Makes Python warnings of this process append to `path` instead of stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        with open(path, "a") as f:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


@contextlib.contextmanager
def quiet_console(log_dir: Path, quiet: bool):
    """Within the block, when `quiet`: this process's warnings go to log_dir/driver.log, and
    the environment tells the workers started inside it (through the sweep's Ray
    runtime_env) to be quiet and log into `log_dir`. Restores everything after."""
    if not quiet:
        yield
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    # Tune's advice on checkpoint frequency (every report carries encodings on purpose)
    env = {QUIET_ENV: "quiet", LOG_DIR_ENV: str(log_dir.resolve()), **QUIET_LIBRARY_ENV,
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_show = warnings.showwarning
    os.environ.update(env)
    send_warnings_to(log_dir / "driver.log")
    try:
        yield
    finally:
        warnings.showwarning = saved_show
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
