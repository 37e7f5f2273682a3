"""`sweeper rerun RESULTS TRIAL_ID`: run one finished trial again from its record (the same
experiment file, CLI overrides and full config) and compare the metrics."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

WHERE = "sweeper rerun"


def load_record(results_dir: str | Path, trial_id: str) -> dict:
    """Returns the record of `trial_id` written by the sweep in `results_dir` (a local
    results folder, STORAGE/NAME); raises ConfigError (one line) when there is none."""
    folder = Path(results_dir).expanduser()
    path = folder / "records" / f"{trial_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (folder / "records").glob("*.json")) if (folder / "records").is_dir() else []
        raise ConfigError(WHERE, "TRIAL_ID", trial_id, ("one of " + ", ".join(known[:20])) if known else
                          f"a trial of a sweep whose results folder holds records/ (none in {folder})")
    return json.loads(path.read_text())


def experiment_of(record: dict):
    """Returns the validated Experiment that runs only the record's trial: its experiment
    file with the same CLI overrides, the trial's config as the one fixed trial, no samples,
    one seed, no scheduler, stopped after as many reports as the original made, named
    <experiment>_rerun_<trial id>; no sensitivity stage when the trial's config holds its ranking."""
    from .cli import build_experiment

    origin = record.get("origin") or {}
    file = origin.get("experiment_file")
    if not file or not Path(file).is_file():
        raise ConfigError(WHERE, "experiment_file", file, "the experiment file the sweep was started from, present "
                          "at that path (records written before sweeper recorded it have none)")
    ov = origin.get("overrides", {})
    exp = build_experiment(file, smoke=ov.get("smoke", False), model=ov.get("model"), device=ov.get("device"),
                           workers=ov.get("workers"), kinds_file=ov.get("kinds_file"),
                           workers_per_device=ov.get("workers_per_device"))
    exp.trials, exp.num_samples, exp.seeds, exp.scheduler = [dict(record["config"])], 0, 1, "fifo"
    reports = record["metrics"].get("training_iteration")
    if isinstance(reports, int) and reports > 0:  # a trial the scheduler stopped early stops there again
        exp.stop_after_reports = reports
    exp.name = f"{record['experiment']}_rerun_{record['trial_id']}"
    from .sensitivity import RANKING_FIELD

    if RANKING_FIELD in record["config"]:  # the trial holds the ranking it ran with: no stage again
        exp.sensitivity = exp.sensitivity_task = None
    return exp.validate()


def rerun(results_dir: str | Path, trial_id: str, storage: str | Path | None = None,
          quiet: bool = False) -> tuple[dict, dict]:
    """Runs the recorded trial again (results in STORAGE/<experiment>_rerun_<id>; STORAGE
    defaults to the folder holding `results_dir`; `quiet` as run_experiment's); returns
    (the old record, the new one)."""
    from .record import trial_record
    from .sweep import run_experiment

    record = load_record(results_dir, trial_id)
    exp = experiment_of(record)
    result = run_experiment(exp, results_dir=storage or Path(results_dir).expanduser().resolve().parent, quiet=quiet)
    return record, trial_record(result.summary["trials"][0], result.summary)
