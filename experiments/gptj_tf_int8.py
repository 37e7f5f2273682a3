"""GPT-J as a TensorFlow SavedModel, static INT8 by Intel Neural Compressor, LAMBADA, swept.

The seed: EleutherAI/gpt-j-6B as a TF SavedModel, INC static INT8 (QuantizeV2/Dequantize in
front of MatMul and ConcatV2), LAMBADA last-word accuracy 78.22% -> 77.23%, latency at
batch 1 1196 ms -> 1404 ms. Here: the seed's two rows (FP32, INT8) as fixed trials, then a
Tune search over INC's options (calibration algorithm and size, per-channel weights, ops
left in float, performance-only vs accuracy-aware). Every trial reports accuracy,
target-word perplexity, latency and throughput at batch 1 and at batch 8.

    pip install -e '.[tf]'                              # TensorFlow + neural-compressor
    python experiments/gptj_tf_int8.py --smoke          # minutes on 2 CPU cores
    ray job submit --working-dir . -- python experiments/gptj_tf_int8.py

The model is `EleutherAI/gpt-j-6B` when the hub (or a local copy) is there, else the
reference model `gptj-ref` (`sweeper zoo build gptj-ref`). A small model trained on ~300k
tokens scores near 0% on LAMBADA, so on reference models the objective is the target-word
perplexity `lambada_ppl` (min); on real checkpoints it is `lambada_acc` (max).

Run as a script, after the sweep it also evaluates the FP32 model through torch, ONNX
Runtime and the TF SavedModel on the same passages (the three must agree), prints the
seed-shaped table (FP32 vs INT8) and logs it to W&B.
"""
import argparse
import json
from pathlib import Path

from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import LambadaTask

SEED_ROWS = [
    {"precision": "fp32"},
    {"precision": "int8", "calibration_algorithm": "minmax", "per_channel": False, "fp32_ops": []},
]
REAL_MODEL, REFERENCE_MODEL = "EleutherAI/gpt-j-6B", "gptj-ref"
WANDB_PROJECT = "sweeper-gptj-tf-int8"


def task_for(model: str, smoke: bool) -> LambadaTask:
    """Returns the LAMBADA task: objective by model kind, 300 passages for a smoke run."""
    return LambadaTask(objective="lambada_ppl" if model == REFERENCE_MODEL else "lambada_acc",
                       max_samples=300 if smoke else None, batch_size=16, timing_batch_size=8,
                       warmup_runs=3, timed_runs=10 if smoke else 30)


def experiment(smoke: bool = False) -> Experiment:
    """Returns the GPT-J TF INT8 sweep; `smoke` makes it a short one. Raises TFUnavailable
    (one line: how to install the tf extra) where TensorFlow is missing, except on a
    cluster, whose TF workers install it themselves (devices/tf_workers.py)."""
    from sweeper.devices.tf_workers import on_cluster
    from sweeper.models.tf_runtime import require_inc

    if not on_cluster():
        require_inc()
    model = resolve_default_model(REAL_MODEL, fallback=REFERENCE_MODEL)
    task = task_for(model, smoke)
    space = {
        "precision": "int8",
        "calibration_algorithm": tune.choice(["minmax", "kl"]),
        "calibration_samples": tune.choice([16, 64] if smoke else [32, 100, 300]),
        "per_channel": tune.choice([False, True]),
        "fp32_ops": tune.choice([[], ["lm_head"], ["ConcatV2"]]),
        "approach": tune.choice(["performance_only", "accuracy_aware"]),
    }
    return Experiment(
        name="gptj_tf_int8_smoke" if smoke else "gptj_tf_int8",
        model=model,
        recipe="inc_static",
        task=task,
        search_space=space,
        fixed={"calibration_seq_len": None, "tolerable_loss": 0.01},
        trials=SEED_ROWS,
        device="cpu",
        # one worker: latency is the point here, and two trials sharing the cores would skew it
        workers=1,
        num_samples=2 if smoke else 12,
        scheduler="fifo",  # one report per trial
        seed=0,
        metric=task.metric,
        mode=task.mode,
        wandb_project=WANDB_PROJECT,
    )


SEED_COLUMNS = ["model", "precision", "recipe", "lambada_acc", "lambada_ppl", "latency_ms", "samples_per_s",
                "latency_ms_b8", "samples_per_s_b8", "Δ acc (pt)", "Δ ppl %", "Δ latency %"]


def seed_rows(summary: dict) -> list[dict]:
    """Returns the seed-shaped rows (FP32, then INT8) from the fixed trials of a summary."""
    trials = [t for t in summary["trials"] if t["status"] == "TERMINATED"]

    def first(pred):
        return next((t for t in trials if pred(t["config"])), None)

    fp32 = first(lambda c: c.get("precision") == "fp32")
    int8 = first(lambda c: c.get("precision") == "int8" and not c.get("fp32_ops")
                 and c.get("calibration_algorithm", "minmax") == "minmax" and not c.get("per_channel")
                 and c.get("approach", "performance_only") == "performance_only")
    rows = []
    for label, t in (("FP32", fp32), ("INT8", int8)):
        if t is None:
            continue
        m = t["metrics"]
        row = {"model": summary["model"], "precision": label,
               "recipe": "-" if label == "FP32" else "INC static, minmax, per-tensor"}
        row.update({k: m.get(k) for k in SEED_COLUMNS if k in m})
        if fp32 is not None and t is not fp32:
            b = fp32["metrics"]
            row["Δ acc (pt)"] = m["lambada_acc"] - b["lambada_acc"]
            row["Δ ppl %"] = 100 * (m["lambada_ppl"] - b["lambada_ppl"]) / b["lambada_ppl"]
            row["Δ latency %"] = 100 * (m["latency_ms"] - b["latency_ms"]) / b["latency_ms"]
        rows.append(row)
    return rows


def report(summary_path: Path, smoke: bool, log_wandb: bool = True) -> dict:
    """Adds to the summary at `summary_path` the seed-shaped table and the torch/ONNX/TF
    agreement of the FP32 model, prints both, logs the table to W&B; returns the additions."""
    from sweeper.tasks.runtime_agreement import compare_runtimes
    from sweeper.reports.tracking import format_table, wandb_mode

    summary = json.loads(summary_path.read_text())
    rows = seed_rows(summary)
    table = format_table(rows, SEED_COLUMNS)
    print("\nseed-shaped table (LAMBADA; latency_ms median per forward pass at batch 1, samples_per_s "
          "passages/s; _b8 at batch 8):\n" + table, flush=True)
    agreement = compare_runtimes(summary["model"], task_for(summary["model"], smoke), log=lambda m: None)
    agree_rows = [{"runtime": n, **{k: r[k] for k in ("lambada_acc", "lambada_ppl", "latency_ms")}}
                  for n, r in agreement["runtimes"].items()]
    print("\nFP32 through three runtimes (same passages):\n"
          + format_table(agree_rows, ["runtime", "lambada_acc", "lambada_ppl", "latency_ms"])
          + f"\nmax |Δ acc| {agreement['max_abs_diff']['lambada_acc']:.4f} pt, "
            f"max rel Δ ppl {agreement['max_rel_diff']['lambada_ppl']:.2e}", flush=True)
    extra = {"seed_table": rows, "runtime_agreement": agreement}
    summary_path.write_text(json.dumps({**summary, **extra}, indent=2, default=str))
    from sweeper.reports.report_page import add_table_to_report

    add_table_to_report(summary_path, "Seed-shaped table (LAMBADA)", rows, SEED_COLUMNS,
                        note="latency_ms: median per forward pass at batch 1; samples_per_s: passages/s; _b8: at batch 8")
    page = add_table_to_report(summary_path, "FP32 through three runtimes (same passages)", agree_rows,
                               ["runtime", "lambada_acc", "lambada_ppl", "latency_ms"])
    if page is not None:
        print(f"[sweeper] report page: {page}", flush=True)
    if log_wandb and wandb_mode() != "disabled":
        from sweeper.reports.wandb_report import log_leaderboard_run

        where = log_leaderboard_run(WANDB_PROJECT, rows, SEED_COLUMNS, None,
                                    summary_path.parent, name=f"{summary['experiment']}-seed-table")
        print(f"[sweeper] seed table logged to W&B ({wandb_mode()}): {where}", flush=True)
    return extra


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    code = main_for_experiment_file(__file__)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--storage", "--results-dir", dest="storage")
    ap.add_argument("--summary")
    args, _ = ap.parse_known_args()
    name = "gptj_tf_int8_smoke" if args.smoke else "gptj_tf_int8"
    from sweeper.storage import default_root, is_uri

    root = args.storage or default_root()
    path = Path(args.summary) if args.summary else None if is_uri(root) else Path(root).expanduser() / name / "summary.json"
    if path is None:
        print("gptj_tf_int8: with a URI --storage, pass --summary PATH to get the seed table and the runtime check")
    if code == 0 and path is not None and path.is_file():
        report(path, args.smoke)
    raise SystemExit(code)
