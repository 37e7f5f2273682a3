"""Weights & Biases set-up (offline unless a key is configured) and result tables."""
from __future__ import annotations

import math
import os
from pathlib import Path


def wandb_mode() -> str:
    """Returns "online" when a W&B key is configured (WANDB_API_KEY or a netrc entry) and
    WANDB_MODE does not say otherwise, else "offline"."""
    forced = os.environ.get("WANDB_MODE")
    if forced in ("offline", "disabled", "dryrun"):
        return "offline" if forced == "dryrun" else forced
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def wandb_callback(project: str, results_dir: Path, group: str):
    """Returns Ray Tune's WandbLoggerCallback logging each trial as a run of `project`
    (offline runs land in results_dir/wandb), or None when W&B is disabled."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    from ray.air.integrations.wandb import WandbLoggerCallback

    if mode == "offline":
        # Ray's callback asks for an API key unless the *environment* says offline; the
        # trial logging actors inherit it from here.
        os.environ["WANDB_MODE"] = "offline"
    wandb_dir = results_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    # upload_timeout: how long the sweep's end waits for trials' logging actors to finish
    # (Ray's default, 1800 s, is a half-hour hang when the exit policy stops trials that
    # never get their end signal; offline runs are written locally in seconds)
    return WandbLoggerCallback(project=project, group=group, mode=mode, dir=str(wandb_dir),
                               excludes=["eval_settings", "artifacts"], log_config=False, upload_timeout=120)


def format_cell(v) -> str:
    """Returns a table cell's text: floats to 4 significant digits (scientific when tiny or
    huge), everything else as str()."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Returns a plain-text table of `rows` (dicts) with the given columns."""
    cells = [[format_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
