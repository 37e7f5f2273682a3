"""The Pareto plot of a leaderboard: quality vs model size and, where measured, vs latency."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import is_finite_number as _finite

AXIS_LABELS = {
    "wikitext2_ppl": "WikiText-2 perplexity",
    "wikitext2_nll": "WikiText-2 NLL (nats/token)",
    "model_size_mb": "model size (MB)",
    "latency_ms": "latency (ms)",
    "tokens_per_s": "throughput (tokens/s)",
    "eval_tokens_per_s": "evaluation throughput (tokens/s)",
    "train_loss": "training loss (nats/token)",
}
TRIALS_GID, FRONT_GID = "trials", "pareto_front"
SWEEP_PARETO_PNG = "summary_pareto.png"  # a sweep's own Pareto plot, beside its summary.json


def axis_label(metric: str) -> str:
    """Returns the axis label of a metric, with its unit."""
    return AXIS_LABELS.get(metric, metric)




def plot_pareto(board, path: str | Path) -> dict:
    """Draws one panel per Pareto front of `board` (a leaderboard.Board): every ranked trial
    as a point (gid "trials"), the front as a line (gid "pareto_front", or
    "pareto_front:<group>" per group) with its trials labelled. Writes the PNG at `path`
    and `<path>.json` holding each series' plotted x/y (read back from the artists) and
    trial ids; returns that dict. Raises ConfigError when no trial has a size or latency."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    from ..errors import ConfigError

    if not board.fronts:
        raise ConfigError("sweeper leaderboard", "--plot", str(path),
                          "sources whose trials report model_size_mb or latency_ms (nothing to draw a front of)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ranked = [r for r in board.rows if r.get("rank") is not None]
    fig, axes = plt.subplots(1, len(board.fronts), figsize=(6.5 * len(board.fronts), 5), squeeze=False)
    data = {"png": path.name, "metric": board.metric, "mode": board.mode, "caption": board.caption, "panels": []}
    for ax, (col, cost) in zip(axes[0], board.fronts):
        pts = [r for r in ranked if _finite(r.get(cost))]
        ids = {TRIALS_GID: [_ident(r) for r in pts]}
        ax.scatter([r[cost] for r in pts], [r[board.metric] for r in pts], s=22, alpha=0.55, color="tab:gray",
                   gid=TRIALS_GID, label="trials")
        groups: dict = {}
        for r in pts:
            if r.get(col):
                groups.setdefault(json.dumps(r.get("group"), default=str), (r.get("group"), []))[1].append(r)
        for value, front in groups.values():
            front.sort(key=lambda r: (r[cost], r[board.metric]))
            gid = FRONT_GID if not board.group_by else f"{FRONT_GID}:{value}"
            ax.plot([r[cost] for r in front], [r[board.metric] for r in front], marker="o", drawstyle="default",
                    gid=gid, label="Pareto front" + (f" ({board.group_by}={value})" if board.group_by else ""))
            ids[gid] = [_ident(r) for r in front]
            for r in front:
                ax.annotate(_short(r), (r[cost], r[board.metric]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(axis_label(cost))
        ax.set_ylabel(axis_label(board.metric) + (" (lower is better)" if board.mode == "min" else " (higher is better)"))
        ax.set_title(f"{axis_label(board.metric)} vs {axis_label(cost)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        data["panels"].append({"front_column": col, "x_key": cost, "y_key": board.metric, "x_label": ax.get_xlabel(),
                               "y_label": ax.get_ylabel(), "series": _series(ax, ids)})
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(board.caption, 110 * len(board.fronts))), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    Path(str(path) + ".json").write_text(json.dumps(data, indent=2, default=str))
    return data


def _ident(r: dict) -> str:
    return f"{r['experiment']}/{r['trial_id']}"


# config keys that name an ONNX / device trial better than its id does
LABEL_KEYS = ("algorithm", "bits", "block_size", "precision", "device", "quant_scheme", "output_bw")


def _short(r: dict) -> str:
    parts = [f"{k}={r[k]}" for k in LABEL_KEYS if r.get(k) not in (None, "")]
    return f"#{r['rank']} " + (" ".join(parts) if parts else f"{r['experiment']}/{str(r['trial_id'])[:12]}")


def _series(ax, ids: dict) -> dict:
    # read back from the artists themselves, so the sidecar shows what the PNG shows
    out = {}
    for artist in list(ax.collections) + list(ax.lines):
        gid = artist.get_gid()
        if gid not in ids:
            continue
        if hasattr(artist, "get_offsets"):
            xy = [(float(x), float(y)) for x, y in artist.get_offsets()]
        else:
            xy = [(float(x), float(y)) for x, y in zip(artist.get_xdata(), artist.get_ydata())]
        out[gid] = {"x": [p[0] for p in xy], "y": [p[1] for p in xy], "trials": ids[gid]}
    return out


def plot_sensitivity(rows: list[dict], metric: str, path: str | Path) -> Path:
    """Draws the per-layer sensitivity bar plot (rows as sensitivity.layer_rows returns
    them, most harmful first): one horizontal bar per layer, its harm vs FP32 in percent
    (in the metric's unit where FP32 is 0). Writes the PNG at `path`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    percent = all(_finite(r.get("harm %")) for r in rows)
    values = [r["harm %"] if percent else r["harm"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(rows) + 1.2)))
    ax.barh(range(len(rows)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values], gid="sensitivity")
    ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=7)
    ax.invert_yaxis()  # most harmful at the top
    ax.axvline(0, color="black", linewidth=0.8)
    unit = "%" if percent else axis_label(metric)
    ax.set_xlabel(f"{axis_label(metric)}: change vs FP32 with only this layer quantized ({unit})")
    ax.set_title("Per-layer sensitivity, most harmful first")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
