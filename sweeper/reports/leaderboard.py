"""`sweeper leaderboard SOURCE...` — ranks the trials of several sweeps together.

A source is a summary JSON (what `sweeper run` writes), a Ray Tune results folder
(results/<experiment>, or results/ holding several), or `wandb:ENTITY/PROJECT` /
`wandb:PATH` (a local folder of offline runs). Every source is first turned into the
summary's shape ("experiment record"), so a results folder and its summary JSON give
identical rows.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .baselines import baseline_of, task_baselines, trial_task
from ..config import is_finite_number as _finite
from ..errors import ConfigError, SweeperError
from ..noise import SEED_KEY, estimate, group_repeats, has_repeats, ties_with_best, tie_mark
from .pareto import pareto_front, tied_with_front
from .summary_schema import is_metric_key, one_line

WHERE = "sweeper leaderboard"
FORMATS = ("table", "md", "csv", "json", "html")
# Settings that change the numbers: trials measured under different ones are not comparable.
SETTING_KEYS = ("dataset", "split", "context_length", "stride", "max_tokens", "dtype")
# Direction of metrics a source may not record (results folders, W&B runs).
KNOWN_MODES = {"glue_score": "max", "wikitext2_ppl": "min", "wikitext2_nll": "min", "model_size_mb": "min", "latency_ms": "min",
               "tokens_per_s": "max", "eval_tokens_per_s": "max", "eval_seconds": "min"}
SIZE, LATENCY = "model_size_mb", "latency_ms"
# shown beside the objective when any trial reports them (eval_tokens_per_s: the ONNX task's throughput)
COST_METRICS = (SIZE, LATENCY, "tokens_per_s", "eval_tokens_per_s")
# (column, cost metric): a trial is marked when no trial is better in quality and cost
FRONTS = (("pareto_size", SIZE), ("pareto_latency", LATENCY))
FIXED_COLUMNS = ("rank", "experiment", "model", "recipe", "device", "trial_id", "status", "error")




# ---------------------------------------------------------------- sources


def load_source(spec: str) -> list[dict]:
    """Returns the experiment records (dicts shaped like the summary JSON) of one source."""
    if spec.startswith("wandb:"):
        return load_wandb(spec[len("wandb:"):])
    from ..storage import is_uri

    if is_uri(spec):
        return load_uri(spec)
    p = Path(spec).expanduser()
    if p.is_file():
        return [load_summary(p)]
    if p.is_dir():
        if _is_results_dir(p):
            return [load_results_dir(p)]
        subs = [d for d in sorted(p.iterdir()) if d.is_dir() and _is_results_dir(d)]
        if subs:  # a results root (results/) holding one folder per experiment
            return [load_results_dir(d) for d in subs]
    allowed = "a summary JSON file, a results folder (results/<experiment>), wandb:ENTITY/PROJECT or wandb:PATH"
    what = "SOURCE (no such file or folder)" if not p.exists() else "SOURCE"
    raise ConfigError(WHERE, what, spec, allowed)


def _read_by_leaderboard(rel: str) -> bool:
    """Whether a results folder's file is one the leaderboard reads (JSON and trial error
    files; not checkpoints or W&B runs)."""
    parts = rel.split("/")
    if parts[0] == "wandb" or any(p.startswith("checkpoint_") for p in parts):
        return False
    return parts[-1].endswith(".json") or parts[-1] in ("error.txt", "error.pkl")


def load_uri(spec: str) -> list[dict]:
    """Returns the records of a summary JSON or results folder at a URI (s3://, gs://,
    file://, ...): the files the leaderboard reads are copied to a temporary folder first,
    and the records name the URI as their source."""
    import tempfile

    from ..storage import fetch_tree

    with tempfile.TemporaryDirectory(prefix="sweeper-leaderboard-") as tmp:
        local = fetch_tree(spec, Path(tmp) / "source", _read_by_leaderboard, where=WHERE, field="SOURCE")
        records = load_source(str(local))
    uri = spec.rstrip("/")
    for r in records:
        r["source"] = r["source"].replace(str(local), uri, 1)
        for t in r["trials"]:  # a results folder's trials name their (temporary) folders
            if isinstance(t.get("path"), str):
                t["path"] = t["path"].replace(str(local), uri, 1)
    return records


def load_summary(path: Path) -> dict:
    """Returns the summary JSON at `path` after checking the keys the leaderboard reads."""
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(WHERE, "SOURCE", str(path), f"a readable summary JSON ({type(exc).__name__}: {exc})") from None
    need = ("experiment", "metric", "mode", "baseline", "trials")
    missing = [k for k in need if k not in s] if isinstance(s, dict) else list(need)
    if missing or not isinstance(s.get("trials"), list):
        raise ConfigError(WHERE, "SOURCE", str(path), f"a sweeper summary JSON (missing: {', '.join(missing) or 'trials list'})")
    return {**s, "source": str(path)}


def _is_results_dir(d: Path) -> bool:
    return ((d / "baseline.json").is_file() or any(d.glob("experiment_state-*.json"))
            or any((t / "params.json").is_file() for t in d.iterdir() if t.is_dir()))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(WHERE, "SOURCE", str(path), f"a readable JSON file ({type(exc).__name__})") from None


def _last_result(path: Path) -> dict:
    """Returns the last line of a Tune result.json (JSON lines): what ResultGrid's `metrics` holds."""
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        return {}
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise ConfigError(WHERE, "SOURCE", str(path), "Tune's result.json (one JSON object per line)") from None


def _tune_state(run_dir: Path) -> tuple[dict, str | None]:
    """Returns ({trial folder name: Tune status}, the TuneConfig metric) from the newest
    experiment_state-*.json, or ({}, None) when there is none."""
    files = sorted(run_dir.glob("experiment_state-*.json"))  # names carry the date: the last is newest
    if not files:
        return {}, None
    state = _read_json(files[-1])
    statuses = {}
    for entry in state.get("trial_data", []):
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        statuses[trial.get("relative_logdir")] = trial.get("status")
    metric = state.get("runner_data", {}).get("_metric")
    return statuses, metric if isinstance(metric, str) and metric != "_metric" else None


def _error_text(trial_dir: Path) -> str | None:
    f = trial_dir / "error.txt"
    if f.is_file():
        return f.read_text(errors="replace")
    return "" if (trial_dir / "error.pkl").is_file() else None


def load_results_dir(run_dir: Path) -> dict:
    """Returns the experiment record of a Ray Tune results folder (trial folders with
    params.json + result.json, and the sweeper's baseline.json), trial by trial what
    `build_summary` would have written."""
    # the sweep's own helpers: a folder must give exactly what its summary JSON gives

    statuses, tune_metric = _tune_state(run_dir)
    raw_base = _read_json(run_dir / "baseline.json") if (run_dir / "baseline.json").is_file() else {}
    trials = []
    for d in sorted(t for t in run_dir.iterdir() if t.is_dir() and (t / "params.json").is_file()):
        if statuses and d.name not in statuses:
            continue  # a trial the sweep no longer holds: `--retry-errored` ran it again as a new trial
        last = _last_result(d / "result.json")
        err = _error_text(d)
        # ResultGrid reports an error only for a trial Tune did not finish (a retried one
        # that then finished keeps its error.txt)
        errored = err is not None and statuses.get(d.name) != "TERMINATED"
        entry = {"trial_id": last.get("trial_id") or d.name, "status": "ERROR" if errored else "TERMINATED",
                 "config": _read_json(d / "params.json"),
                 "metrics": {k: v for k, v in last.items() if is_metric_key(k)}}
        if errored:
            entry["error"] = one_line(err)
        entry["path"] = str(d)
        trials.append(entry)
    # model/recipe/mode are not in Tune's files: the sweep writes them to experiment.json
    # (and the summary beside them has them too)
    meta = {}
    for name in ("summary.json", "experiment.json"):
        if (run_dir / name).is_file():
            meta = {**_read_json(run_dir / name), **meta}
    metric = meta.get("metric") or tune_metric
    kinds = {str(t["metrics"]["worker_id"]).rsplit("-", 1)[0] for t in trials if "worker_id" in t["metrics"]}
    return {"experiment": meta.get("experiment", run_dir.name), "metric": metric,
            "mode": meta.get("mode") or KNOWN_MODES.get(metric),
            "baseline": {k: v for k, v in raw_base.items() if k != "eval_settings"},
            "eval_settings": raw_base.get("eval_settings", {}),
            "model": meta.get("model"), "recipe": meta.get("recipe"),
            "device": meta.get("device") or (kinds.pop() if len(kinds) == 1 else None),
            "trials": trials, "source": str(run_dir)}


def load_wandb(target: str) -> list[dict]:
    """Returns one experiment record per W&B run group: online `ENTITY/PROJECT` through
    wandb.Api(), or a local folder of offline runs. W&B holds no baseline or evaluation
    settings, so those stay empty (deltas blank; mixing with other sources needs --allow-mixed)."""
    p = Path(target).expanduser()
    if p.exists():
        runs = _offline_runs(p)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", target):
        runs = _online_runs(target)
    else:
        raise ConfigError(WHERE, "SOURCE", f"wandb:{target}", "wandb:ENTITY/PROJECT or wandb:PATH to a local wandb folder")

    groups: dict[str, dict] = {}
    for r in runs:
        if r["config"].get("sweeper_leaderboard"):  # our own sweep-level runs are not trials
            continue
        exp = groups.setdefault(r["group"] or r["project"] or "wandb", {
            "experiment": r["group"] or r["project"] or "wandb", "metric": None, "mode": None, "baseline": {},
            "eval_settings": {}, "model": None, "recipe": None, "device": None, "trials": [],
            "source": f"wandb:{target}"})
        metrics = {k: v for k, v in r["summary"].items() if not k.startswith("_") and is_metric_key(k)}
        entry = {"trial_id": r["id"], "status": "ERROR" if r["failed"] else "TERMINATED",
                 "config": {k: v for k, v in r["config"].items() if not k.startswith("_")}, "metrics": metrics}
        if r["failed"]:
            entry["error"] = "W&B run failed"
        exp["trials"].append(entry)
    if not groups:
        raise ConfigError(WHERE, "SOURCE", f"wandb:{target}", "a W&B project or folder holding trial runs (found none)")
    for exp in groups.values():
        found = {k for t in exp["trials"] for k in t["metrics"] if k in KNOWN_MODES and k not in COST_METRICS}
        if len(found) == 1:
            exp["metric"] = found.pop()
            exp["mode"] = KNOWN_MODES[exp["metric"]]
    return list(groups.values())


def _offline_runs(root: Path) -> list[dict]:
    from .wandb_offline import iter_records, read_offline_run

    # not the `latest-run` link: it would count its run twice
    dirs = [root] if any(root.glob("run-*.wandb")) else sorted(
        d for d in root.rglob("*run-*") if d.is_dir() and not d.is_symlink() and any(d.glob("run-*.wandb")))
    runs = []
    for d in dirs:
        r = read_offline_run(d)
        group, exit_code = None, None
        for rec in iter_records(next(iter(sorted(d.glob("run-*.wandb"))))):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                group = rec.run.run_group or None
            elif kind == "exit":
                exit_code = rec.exit.exit_code
        runs.append({"id": r["run_id"], "project": r["project"], "group": group, "config": r["config"],
                     "summary": r["summary"], "failed": bool(exit_code)})
    return runs


def _online_runs(path: str) -> list[dict]:
    import wandb

    try:
        runs = list(wandb.Api().runs(path))
    except Exception as exc:  # the API raises many types (auth, 404, network)
        raise ConfigError(WHERE, "SOURCE", f"wandb:{path}", f"a W&B project you can read ({type(exc).__name__})") from None
    return [{"id": r.id, "project": path.split("/")[1], "group": r.group, "config": dict(r.config),
             "summary": dict(r.summary._json_dict), "failed": r.state in ("failed", "crashed")} for r in runs]


# ---------------------------------------------------------------- the board


@dataclass
class Board:
    """The ranked rows: `columns` in display order; rows carry "group" when grouped."""

    rows: list[dict]
    columns: list[str]
    metric: str
    mode: str
    settings: dict  # evaluation settings every source shares
    mixed: list[str] = field(default_factory=list)  # settings that differ (shown as columns)
    group_by: str | None = None
    fronts: list[tuple[str, str]] = field(default_factory=list)  # (column, cost metric) drawn
    repeated: bool = False  # rows are configurations: mean ± std over their seeds

    @property
    def caption(self) -> str:
        """Returns one line: the objective and the evaluation settings of the numbers."""
        shown = ", ".join(f"{k}={self.settings[k]}" for k in SETTING_KEYS if k in self.settings)
        mixed = f"; differing (see columns): {', '.join(self.mixed)}" if self.mixed else ""
        unit = self.settings.get("unit")
        noise = ("; per configuration: mean, ± sample std over its n seeds; ≈ tied = within 2 standard errors "
                 "(sweeper.noise), ? = n < 2") if self.repeated else ""
        return f"{self.metric} ({self.mode}{', ' + unit if unit else ''}) on {shown or 'unknown settings'}{mixed}{noise}"

    def groups(self) -> list[tuple[object, list[dict]]]:
        """Returns [(group value, rows)] in display order (one group, None, when ungrouped)."""
        out: dict = {}
        for r in self.rows:
            out.setdefault(_key(r.get("group")), (r.get("group"), []))[1].append(r)
        return list(out.values())


def _key(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _resolve_objective(records: list[dict], metric: str | None, mode: str | None) -> tuple[str, str]:
    if metric is None:
        named = sorted({r["metric"] for r in records if r.get("metric")})
        if len(named) != 1:
            raise ConfigError(WHERE, "--metric", None, "one of " + ", ".join(named) if named
                              else "the objective to rank by (the sources do not name one)")
        metric = named[0]
    reported = sorted({k for r in records for t in r["trials"] for k, v in t["metrics"].items() if _finite(v)})
    if metric not in reported:
        raise ConfigError(WHERE, "--metric", metric, "a metric the trials report: " + ", ".join(reported))
    if mode is None:
        modes = {r["mode"] for r in records if r.get("metric") == metric and r.get("mode")}
        if len(modes) > 1:
            raise ConfigError(WHERE, "--mode", None, f"min or max (the sources disagree on {metric})")
        mode = modes.pop() if modes else KNOWN_MODES.get(metric)
        if mode is None:
            raise ConfigError(WHERE, "--mode", None, f"min or max (no source says how to rank {metric})")
    return metric, mode


def check_settings(records: list[dict], allow_mixed: bool) -> tuple[dict, list[str]]:
    """Returns (settings shared by every source, names of the differing ones); raises
    ConfigError naming the first differing setting unless `allow_mixed`."""
    shared, mixed = {}, []
    for k in SETTING_KEYS + ("unit",):
        values = {r["experiment"]: (r.get("eval_settings") or {}).get(k) for r in records}
        if len({_key(v) for v in values.values()}) == 1:
            shared[k] = next(iter(values.values()))
        elif k in SETTING_KEYS:
            if not allow_mixed:
                raise ConfigError(WHERE, f"eval_settings.{k}", values,
                                  "one value across all sources (rank them together anyway with --allow-mixed)")
            mixed.append(k)
    return {k: v for k, v in shared.items() if v is not None or k in SETTING_KEYS}, mixed


def _varying_config(records: list[dict]) -> list[str]:
    keys: list[str] = []
    for r in records:
        for k in sorted({k for t in r["trials"] for k in t["config"]}):
            if len({_key(t["config"].get(k)) for t in r["trials"]}) > 1 and k not in keys and k not in FIXED_COLUMNS:
                keys.append(k)
    return keys


def _strip_type(msg: str) -> str:
    # a pickled error gives its message, error.txt gives "Type: message": show the message
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ", "", msg or "")


def build_board(records: list[dict], *, metric: str | None = None, mode: str | None = None,
                group_by: str | None = None, allow_mixed: bool = False, top: int | None = None) -> Board:
    """Returns the Board of all trials of `records`: ranked by `metric` (mode min|max) within
    each group, Pareto fronts marked; ERROR and non-finite trials last, unranked.

    When some configuration ran under several seeds (`noise.has_repeats`), a row is a
    configuration instead of a trial: each metric is its mean over the finished repeats,
    with "± metric" (sample std) and "n"; rows rank by the mean; "tied_best" says whether
    a row is within the noise of rank 1 and "<front>_tied" whether no row beats it beyond
    the noise (`pareto.tied_with_front`); True / False / None (unknown: n < 2)."""
    if not records:
        raise ConfigError(WHERE, "SOURCE", None, "at least one source")
    seen: dict = {}
    for r in records:
        for t in r["trials"]:
            k = (r["experiment"], t["trial_id"])
            if k in seen:
                raise ConfigError(WHERE, "SOURCE", r.get("source"), f"sources with distinct trials (trial {k[1]} of "
                                  f"{k[0]} is also in {seen[k]})")
            seen[k] = r.get("source")
    metric, mode = _resolve_objective(records, metric, mode)
    tasks = sorted({str(trial_task(t, r)) for r in records for t in r["trials"] if trial_task(t, r) is not None})
    if len(tasks) > 1:
        # scores of different tasks are different quantities: rank within each task
        if group_by is None:
            group_by = "task"
        elif group_by != "task" and not allow_mixed:
            raise ConfigError(WHERE, "--group-by", group_by, f"task (the trials span the tasks {', '.join(tasks)}; "
                              "rank them together anyway with --allow-mixed)")
        records = [{**r, "eval_settings": {k: v for k, v in (r.get("eval_settings") or {}).items() if k != "task"}}
                   for r in records]
    settings, mixed = check_settings(records, allow_mixed)
    repeated = any(has_repeats(r["trials"]) for r in records)
    if repeated and group_by == SEED_KEY:
        raise ConfigError(WHERE, "--group-by", group_by, "a key other than seed (repeats over seeds are aggregated)")
    config_keys = [k for k in _varying_config(records) if not (repeated and k == SEED_KEY)]
    if group_by == "task" and "task" not in config_keys:
        config_keys.append("task")
    if group_by and group_by not in FIXED_COLUMNS and group_by not in config_keys:
        known = {k for r in records for t in r["trials"] for k in t["config"]}
        if group_by not in known:
            raise ConfigError(WHERE, "--group-by", group_by, "experiment, model, recipe, device or a config key: "
                              + ", ".join(sorted(known)))
        config_keys.append(group_by)
    shown = [metric] + [m for m in COST_METRICS if m != metric and any(m in t["metrics"] for r in records for t in r["trials"])]

    rows, noise = [], {}  # noise: id(row) -> {metric: Estimate} of a configuration row
    for r in records:
        task_base = task_baselines(r)
        for unit in group_repeats(r["trials"]) if repeated else [[t] for t in r["trials"]]:
            t = unit[0]
            base = baseline_of(t, r, task_base)
            row = {"rank": None, "experiment": r["experiment"], "model": t["config"].get("model") or r.get("model"),
                   "recipe": t["config"].get("recipe", r.get("recipe")),
                   "device": t["config"].get("device", r.get("device"))}
            row.update({k: t["config"].get(k) for k in config_keys})
            if "task" in config_keys and row.get("task") is None:
                row["task"] = trial_task(t, r)
            row.update({k: (r.get("eval_settings") or {}).get(k) for k in mixed})
            done = [u for u in unit if u["status"] == "TERMINATED"]
            if repeated:
                noise[id(row)] = {m: estimate(u["metrics"].get(m) for u in done) for m in shown}
            for m in shown:
                v, b = (noise[id(row)][m].mean if repeated else t["metrics"].get(m)), base.get(m)
                row[m] = v
                if repeated:
                    row[f"± {m}"] = noise[id(row)][m].std
                row[f"Δ {m}"] = v - b if _finite(v) and _finite(b) else None
                row[f"Δ% {m}"] = 100.0 * (v - b) / b if _finite(v) and _finite(b) and b != 0 else None
            if repeated:
                failed = [u for u in unit if u["status"] == "ERROR"]
                row["n"], row["trial_ids"] = len(done), [u["trial_id"] for u in unit]
                row["trial_id"] = ",".join(str(u["trial_id"]) for u in unit)
                row["status"] = "TERMINATED" if done else "ERROR"
                row["error"] = (f"{len(failed)} of {len(unit)} runs failed: " + _strip_type(failed[0].get("error", ""))[:160]
                                if failed else None)
            else:
                row["trial_id"], row["status"] = t["trial_id"], t["status"]
                row["error"] = _strip_type(t.get("error", ""))[:200] if t["status"] == "ERROR" else None
                if "feasible" in t:  # a sweep with constraints (objectives.py)
                    row["feasible"], row["pick"] = bool(t["feasible"]), t["trial_id"] == r.get("pick")
            if group_by:
                row["group"] = row.get(group_by)
            rows.append(row)

    fronts = [(col, cost) for col, cost in FRONTS if any(_finite(r.get(cost)) for r in rows)]
    sign = 1 if mode == "min" else -1
    out = []
    for _, grp in Board(rows, [], metric, mode, {}).groups():
        ranked = [r for r in grp if r["status"] == "TERMINATED" and _finite(r[metric])]
        ranked.sort(key=lambda r: (sign * r[metric], r["experiment"], str(r["trial_id"])))
        if repeated:  # against rank 1, before --top cuts
            for r in grp:
                r["tied_best"] = None
            for r, tie in zip(ranked, ties_with_best([noise[id(r)][metric] for r in ranked], mode)):
                r["tied_best"] = tie
        for col, cost in fronts:  # over every ranked trial, also those --top leaves out
            pts = [r for r in ranked if _finite(r.get(cost))]
            on = set(pareto_front([(r[metric], r[cost]) for r in pts], (mode, "min")))
            for r in grp:
                r[col] = None
                if repeated:
                    r[f"{col}_tied"] = None
            for i, r in enumerate(pts):
                r[col] = i in on
            if repeated:
                tied = tied_with_front([(noise[id(r)][metric], noise[id(r)][cost]) for r in pts], (mode, "min"))
                for r, tie in zip(pts, tied):
                    r[f"{col}_tied"] = tie
        if top is not None:
            ranked = ranked[:top]
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
        rest = sorted((r for r in grp if r["rank"] is None and (top is None or r["status"] == "ERROR"
                                                                 or not _finite(r[metric]))),
                      key=lambda r: (r["status"] != "ERROR", r["experiment"], str(r["trial_id"])))
        out += ranked + rest
    columns = ["rank", "experiment", "model", "recipe", "device"] + config_keys + mixed + (["n"] if repeated else [])
    for m in shown:
        columns += [m] + ([f"± {m}"] if repeated else []) + [f"Δ {m}", f"Δ% {m}"]
    columns += (["tied_best"] if repeated else []) + [col for col, _ in fronts]
    columns += [f"{col}_tied" for col, _ in fronts] if repeated else []
    columns += (["feasible", "pick"] if any("feasible" in r for r in out) else []) + ["trial_id", "status"]
    if any(r["error"] for r in out):
        columns.append("error")
    return Board(out, columns, metric, mode, settings, mixed, group_by, fronts, repeated)


# ---------------------------------------------------------------- formats


def _cell(v, fmt: str, col: str = "") -> str:
    if (col == "tied_best" or col.endswith("_tied")) and fmt in ("table", "md", "html"):
        return tie_mark(v)
    if v is None:
        return "" if fmt != "table" else "-"
    if isinstance(v, bool):
        if (col.startswith("pareto_") or col == "pick") and fmt in ("table", "md", "html"):
            return "✓" if v else ""
        if col == "feasible" and fmt in ("table", "md", "html"):
            return "yes" if v else "no"
        return str(v).lower() if fmt == "csv" else str(v)
    if isinstance(v, float):
        if fmt == "csv":
            return repr(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 or abs(v) >= 1e5 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _group_title(board: Board, value) -> str:
    return f"{board.group_by} = {value}"


def format_board(board: Board, fmt: str) -> str:
    """Returns the board as text in `fmt` (table | md | csv | json | html)."""
    if fmt == "json":
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        cols = board.columns + (["group"] if board.group_by else [])
        return json.dumps({"metric": board.metric, "mode": board.mode, "caption": board.caption,
                           "eval_settings": board.settings, "mixed_settings": board.mixed, "group_by": board.group_by,
                           "columns": cols, "rows": [{c: clean(r.get(c)) for c in cols} for r in board.rows]},
                          indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        cols = (["group"] if board.group_by else []) + board.columns
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[_cell(r.get(c), "csv") for c in cols] for r in board.rows])
        return buf.getvalue()
    parts = []
    if fmt == "table":
        from .tracking import format_table

        parts.append(board.caption)
        for value, rows in board.groups():
            if board.group_by:
                parts.append(f"\n== {_group_title(board, value)} ==")
            parts.append(format_table([{c: _cell(r.get(c), "table", c) for c in board.columns} for r in rows], board.columns))
        return "\n".join(parts)
    if fmt == "md":
        parts.append(f"**Leaderboard: {board.caption}**")
        if board.fronts:
            parts.append("✓ in " + ", ".join(f"`{c}`" for c, _ in board.fronts) + f": on the Pareto front of "
                         f"{board.metric} vs " + " / ".join(m for _, m in board.fronts) + ".")
        for value, rows in board.groups():
            if board.group_by:
                parts.append(f"### {_group_title(board, value)}")
            esc = lambda s: s.replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(esc(c) for c in board.columns) + " |",
                     "|" + "|".join("---:" if c == "rank" else "---" for c in board.columns) + "|"]
            lines += ["| " + " | ".join(esc(_cell(r.get(c), "md", c)) for c in board.columns) + " |" for r in rows]
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"
    if fmt == "html":
        e = html.escape
        for value, rows in board.groups():
            title = e(board.caption) + (f" — {e(_group_title(board, value))}" if board.group_by else "")
            head = "".join(f"<th>{e(c)}</th>" for c in board.columns)
            body = "\n".join("<tr>" + "".join(f"<td>{e(_cell(r.get(c), 'html', c))}</td>" for c in board.columns) + "</tr>"
                             for r in rows)
            parts.append(f"<table>\n<caption>{title}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")
        return "\n".join(parts) + "\n"
    raise ConfigError(WHERE, "--format", fmt, ", ".join(FORMATS))


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sweeper leaderboard", description="Rank the trials of several sweeps together.")
    ap.add_argument("sources", nargs="+", metavar="SOURCE",
                    help="summary JSON, results folder, wandb:ENTITY/PROJECT or wandb:PATH")
    ap.add_argument("--metric", help="objective to rank by (default: the sources' objective)")
    ap.add_argument("--mode", choices=("min", "max"), help="min or max (default: the sources' mode)")
    ap.add_argument("--group-by", help="one block per value of this column or config key, e.g. device")
    ap.add_argument("--format", default="table", choices=FORMATS)
    ap.add_argument("--plot", metavar="FILE.png", help="draw the Pareto fronts here (PNG, plus FILE.png.json with the data)")
    ap.add_argument("--top", type=int, help="show the best N trials of each group (failed ones still listed)")
    ap.add_argument("--allow-mixed", action="store_true",
                    help="rank trials measured under different evaluation settings, the settings as columns")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Runs `sweeper leaderboard`; prints the board to stdout; returns the exit status
    (0, or 2 after a one-line error on stderr)."""
    args = _parser().parse_args(argv)
    try:
        if args.top is not None:
            from ..config import check_int

            check_int(WHERE, "--top", args.top, 1, 1_000_000)
        if args.plot and not args.plot.lower().endswith(".png"):
            raise ConfigError(WHERE, "--plot", args.plot, "a file name ending in .png")
        records = [rec for spec in args.sources for rec in load_source(spec)]
        board = build_board(records, metric=args.metric, mode=args.mode, group_by=args.group_by,
                            allow_mixed=args.allow_mixed, top=args.top)
        if args.plot:
            from .plots import plot_pareto

            plot_pareto(board, args.plot)
        sys.stdout.write(format_board(board, args.format).rstrip("\n") + "\n")
        if args.plot:
            print(f"[sweeper] Pareto plot written to {args.plot}", file=sys.stderr)
        return 0
    except SweeperError as exc:
        print(f"sweeper: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
