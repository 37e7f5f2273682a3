"""The sweep's report page: one self-contained HTML file (inline CSS, images as data URIs,
no script, no network) with the trial table and Δ vs FP32, the experiment's own tables
(the seed-shaped table), the Pareto plots, each trial's metric per epoch, the failed trials
and why, and the evaluation settings and package versions. One page can hold several
sweeps (`sweeper report`): then a leaderboard across them comes first."""
from __future__ import annotations

import base64
import datetime
import html
import json
import tempfile
from pathlib import Path

from ..config import is_finite_number
from .history import sweep_histories
from .plots import SWEEP_PARETO_PNG
from .summary_tables import summary_rows
from .tracking import format_cell

PAGE_NAME = "report.html"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#1b1f24;padding:0 16px}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:2em}
h3{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse;font-size:13px;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f6f8fa}tr.baseline td{background:#fff8c5}tr.best td{background:#dafbe1}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.err{white-space:normal;min-width:300px}
.caption{color:#57606a;font-size:13px}img{max-width:100%;border:1px solid #d0d7de;margin:6px 0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dt{color:#57606a}
"""


def escape(value) -> str:
    """Returns a table cell's text (format_cell; None is empty), HTML-escaped."""
    return "" if value is None else html.escape(format_cell(value))


def html_table(rows: list[dict], columns: list[str], *, row_class=None, table_class: str = "") -> str:
    """Returns an HTML table of `rows` with `columns`; `row_class(row)` gives each <tr> its
    class (or None); numbers are right-aligned."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cls = row_class(r) if row_class else None
        cells = []
        for c in columns:
            v = r.get(c, "")
            kind = "num" if isinstance(v, (int, float)) and not isinstance(v, bool) else "err" if c == "error" else ""
            cells.append(f"<td class=\"{kind}\">{escape(v)}</td>" if kind else f"<td>{escape(v)}</td>")
        body.append(f"<tr{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{''.join(cells)}</tr>")
    cls_attr = f' class="{table_class}"' if table_class else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(path: str | Path) -> str:
    """Returns the PNG file at `path` as a data: URI (the page carries its images)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def image(path: str | Path, alt: str) -> str:
    """Returns an <img> holding the PNG at `path`."""
    return f'<img src="{png_data_uri(path)}" alt="{html.escape(alt)}">'


def definition_list(items: dict) -> str:
    """Returns a <dl> of `items` (values that are dicts or lists shown as JSON)."""
    out = []
    for k, v in items.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else format_cell(v)
        out.append(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(text)}</dd>")
    return f"<dl>{''.join(out)}</dl>"


def plot_curves(summary: dict, histories: dict[str, list[dict]], path: Path) -> Path | None:
    """Draws each trial's objective per epoch (Tune's report count where no epoch is
    reported), and its training loss where reported, into the PNG at `path`; returns it,
    or None when no trial has two reports of the objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .plots import axis_label

    metric = summary["metric"]
    panels = [m for m in (metric, "train_loss")
              if any(sum(is_finite_number(h.get(m)) for h in hist) >= (2 if m == metric else 1)
                     for hist in histories.values())]
    if metric not in panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    base = summary.get("baseline", {}).get(metric)
    for ax, m in zip(axes[0], panels):
        for trial_id, hist in histories.items():
            pts = [(h.get("epoch", h.get("training_iteration")), h[m]) for h in hist if is_finite_number(h.get(m))]
            pts = [(x, y) for x, y in pts if is_finite_number(x)]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3, label=trial_id)
        if m == metric and is_finite_number(base):
            ax.axhline(base, color="black", linestyle="--", linewidth=1, label="fp32 baseline")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(axis_label(m))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) <= 20:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pareto_image(records: list[dict], folder: Path, name: str) -> tuple[str, object]:
    """Returns (the <img> of the Pareto plot of `records`, or "" when no trial reports a
    size or latency, the leaderboard Board) drawn into `folder`."""
    from .leaderboard import build_board
    from .plots import plot_pareto

    board = build_board(records)
    if not board.fronts:
        return "", board
    path = folder / f"{name}_pareto.png"
    plot_pareto(board, path)
    return image(path, f"Pareto plot of {name}"), board


def sweep_section(summary: dict, run_dir: Path | None, folder: Path) -> str:
    """Returns the HTML section of one sweep (its images drawn into `folder`)."""
    name = summary["experiment"]
    trials = summary.get("trials", [])
    failed = [t for t in trials if t.get("status") == "ERROR"]
    parts = [f"<h2 id=\"{html.escape(name)}\">{html.escape(name)}</h2>"]
    facts = {k: summary.get(k) for k in ("model", "recipe", "device", "metric", "mode", "elapsed_s", "seeds")
             if summary.get(k) is not None}
    facts["trials"] = f"{len(trials)} ({len(trials) - len(failed)} finished, {len(failed)} failed)"
    if summary.get("best_trial"):
        facts["best trial"] = summary["best_trial"]
    if summary.get("results"):
        facts["results"] = summary["results"]
    if summary.get("constraints"):
        facts["constraints"] = "; ".join(summary["constraints"])
        facts["pick"] = summary.get("pick") or "no feasible trial"
    if summary.get("stopped_because"):
        facts["stopped because"] = summary["stopped_because"]
    parts.append(definition_list(facts))

    caption, rows, cols, legend = summary_rows(summary)
    best = summary.get("best_trial")

    def row_class(r):
        return "baseline" if r["status"] == "-" else "trial best" if r["trial"] == best else "trial"

    parts.append(f"<h3>Trials (Δ vs FP32)</h3><p class=\"caption\">{html.escape(caption)}</p>")
    parts.append(html_table(rows, cols, row_class=row_class, table_class="trials"))
    if legend:
        parts.append(f"<p class=\"caption\">{html.escape(legend)}</p>")
    for extra in summary.get("tables", []):
        parts.append(f"<h3>{html.escape(extra['title'])}</h3>")
        parts.append(html_table(extra["rows"], extra["columns"], table_class="extra"))
        if extra.get("note"):
            parts.append(f"<p class=\"caption\">{html.escape(extra['note'])}</p>")

    stage = summary.get("sensitivity")
    if stage:
        parts.append("<h3>Per-layer sensitivity</h3><p class=\"caption\">"
                     + escape(f"{stage['metric']} with one layer at a time quantized by {stage['probe']}; FP32 "
                              f"{stage['fp32']}; {stage['jobs']} jobs on {stage['workers']} worker(s) in "
                              f"{stage['seconds']:.0f} s; harm: how much worse than FP32") + "</p>")
        parts.append(html_table(stage["rows"], stage["columns"], table_class="sensitivity"))
        plot = Path(run_dir) / stage["plot"] if run_dir is not None and stage.get("plot") else None
        if plot is not None and plot.is_file():
            parts.append(image(plot, f"{name} per-layer sensitivity"))

    drawn = Path(run_dir) / SWEEP_PARETO_PNG if run_dir is not None else None
    if drawn is not None and drawn.is_file():  # the sweep drew it already (sweep.report_leaderboard)
        pareto = image(drawn, f"Pareto plot of {name}")
    else:
        pareto, _ = pareto_image([summary], folder, name)
    if pareto:
        parts.append("<h3>Pareto front</h3>" + pareto)
    curves = plot_curves(summary, sweep_histories(summary, run_dir), folder / f"{name}_curves.png")
    if curves is not None:
        parts.append(f"<h3>Metric per epoch</h3>{image(curves, f'{name} metric per epoch')}")

    parts.append(f"<h3>Failed trials ({len(failed)})</h3>")
    if failed:
        parts.append(html_table([{"trial": t["trial_id"], "attempts": t.get("attempts", ""),
                                  "error": t.get("error", "")} for t in failed],
                                ["trial", "attempts", "error"], table_class="failed"))
    else:
        parts.append("<p>none</p>")

    parts.append("<h3>Evaluation settings</h3>" + definition_list(summary.get("eval_settings") or {}))
    versions = dict(summary.get("driver_versions") or {})
    for worker, info in sorted((summary.get("devices") or {}).items()):
        for pkg, v in (info.get("versions") or {}).items():
            if versions.get(pkg) != v:
                versions[f"{pkg} ({worker})"] = v
    origin = summary.get("origin") or {}
    parts.append("<h3>Versions and origin</h3>" + definition_list({**versions, **origin}))
    return "\n".join(parts)


def render_page(sweeps: list[tuple[dict, Path | None]], title: str) -> str:
    """Returns the whole page for `sweeps` ((summary, its results folder or None) pairs):
    with several, a leaderboard of all their trials and its Pareto plot first."""
    with tempfile.TemporaryDirectory(prefix="sweeper_report_") as tmp:
        folder = Path(tmp)
        parts = []
        if len(sweeps) > 1:
            pareto, board = pareto_image([s for s, _ in sweeps], folder, "leaderboard")
            parts.append(f"<h2>Leaderboard ({len(board.rows)} trials)</h2><p class=\"caption\">"
                         f"{html.escape(board.caption)}</p>")
            parts.append(html_table(board.rows, board.columns, table_class="leaderboard"))
            parts.append(pareto)
        toc = "".join(f"<li><a href=\"#{html.escape(s['experiment'])}\">{html.escape(s['experiment'])}</a></li>"
                      for s, _ in sweeps)
        sections = [sweep_section(s, d, folder) for s, d in sweeps]
    made = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"caption\">written {made} by sweeper; self-contained (no network needed)</p>"
            f"<ul>{toc}</ul>{''.join(parts)}{''.join(sections)}</body></html>")


def write_report_page(sweeps: list[tuple[dict, Path | None]], path: str | Path, title: str | None = None) -> Path:
    """Writes render_page(sweeps) to `path`; returns the path."""
    path = Path(path)
    title = title or ("sweeper report: " + ", ".join(s["experiment"] for s, _ in sweeps))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(sweeps, title), encoding="utf-8")
    return path


def load_sweeps(specs: list[str]) -> list[tuple[dict, Path | None]]:
    """Returns (summary, results folder) for each of `specs`: a results folder (its
    summary.json, or what its Tune files hold when the sweep never finished), a results root
    holding several, or a summary JSON file (its folder found from its trials' paths when it
    still exists). Raises ConfigError (one line) for anything else, e.g. a remote URI."""
    from ..errors import ConfigError
    from ..storage import is_uri
    from .leaderboard import load_results_dir, load_source, load_summary

    out = []
    for spec in specs:
        if is_uri(spec) or spec.startswith("wandb:"):
            raise ConfigError("sweeper report", "RESULTS", spec, "a local results folder or summary JSON "
                              "(copy a remote one here first, e.g. with `gsutil -m cp -r` or `aws s3 sync`)")
        p = Path(spec).expanduser()
        if p.is_dir() and (p / "summary.json").is_file():
            out.append((load_summary(p / "summary.json"), p))
        elif p.is_file():
            s = load_summary(p)
            folders = {Path(t["path"]).parent for t in s["trials"] if t.get("path") and Path(t["path"]).is_dir()}
            out.append((s, folders.pop() if len(folders) == 1 else None))
        elif p.is_dir():
            records = load_source(spec)  # an unfinished sweep, or a root of several
            for r in records:
                d = Path(r["source"])
                out.append((load_summary(d / "summary.json") if (d / "summary.json").is_file() else load_results_dir(d), d))
        else:
            load_source(spec)  # raises its one-line error
    return out


def add_table_to_report(summary_path: str | Path, title: str, rows: list[dict], columns: list[str],
                        note: str = "") -> Path | None:
    """Adds an experiment's own table (e.g. its seed-shaped table) to the summary at
    `summary_path` (replacing one of the same title), and to the summary in the sweep's
    results folder when that is a local folder, then writes that folder's report page
    again; returns the page's path (None when the results are not in a local folder)."""
    entry = {"title": title, "columns": list(columns), "rows": rows, **({"note": note} if note else {})}

    def add(path: Path) -> dict:
        summary = json.loads(path.read_text())
        summary["tables"] = [t for t in summary.get("tables", []) if t.get("title") != title] + [entry]
        path.write_text(json.dumps(summary, indent=2, default=str))
        return summary

    summary = add(Path(summary_path))
    run_dir = Path(summary["results"]) if summary.get("results") and "://" not in summary["results"] else None
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    if (run_dir / "summary.json").resolve() != Path(summary_path).resolve():
        summary = add(run_dir / "summary.json")
    return write_report_page([(summary, run_dir)], run_dir / PAGE_NAME)
