"""What a result can be traced back to: the package versions of the process that produced
it, the project's git commit, and how the sweep was started (experiment file and CLI
overrides). Every trial gets a record (`trial_record`) that `sweeper rerun` runs again."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

# distribution names, in the order a record lists them; absent ones are left out
RECORDED_PACKAGES = ("torch", "aimet-torch", "onnxruntime", "onnxruntime-gpu", "transformers", "ray",
                     "tensorflow", "tensorflow-cpu", "neural-compressor", "numpy")


def package_versions() -> dict[str, str]:
    """Returns {"python": version, distribution: version} for RECORDED_PACKAGES installed in
    this process's environment (read from their metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def git_commit(path: str | Path) -> str | None:
    """Returns the commit of the git checkout holding `path` ("<sha>" or "<sha>-dirty" when
    tracked files differ from it), or None outside a checkout or without git."""
    folder = Path(path).resolve()
    folder = folder if folder.is_dir() else folder.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_origin(experiment_file: str | Path, overrides: dict) -> dict:
    """Returns how a sweep was started: the experiment file (absolute path), the CLI
    overrides that were set (None ones left out) and the git commit of the file's checkout."""
    path = Path(experiment_file).resolve()
    return {"experiment_file": str(path), "overrides": {k: v for k, v in overrides.items() if v is not None},
            "git_commit": git_commit(path)}


def trial_record(trial: dict, summary: dict) -> dict:
    """Returns the record of one summary trial: its id, status, full config, seed, metrics,
    the device and package versions of the worker that ran its last job (from the summary's
    `devices`), and the sweep's origin (experiment file, overrides, git commit)."""
    worker = summary.get("devices", {}).get(trial["metrics"].get("worker_id") or "", {})
    config = trial["config"]
    return {"trial_id": trial["trial_id"], "experiment": summary["experiment"], "status": trial["status"],
            "config": config, "seed": config.get("seed", summary.get("seed")),
            "metric": summary["metric"], "mode": summary["mode"], "metrics": trial["metrics"],
            "device": {"kind": worker.get("kind"), "name": worker.get("device"), "worker_id":
                       trial["metrics"].get("worker_id")},
            "versions": worker.get("versions") or summary.get("driver_versions", {}),
            "origin": summary.get("origin") or {}}
