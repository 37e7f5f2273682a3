"""The seed's two rows of experiments/gptj_tf_int8.py (FP32 and INC INT8 on LAMBADA) and the
torch/ONNX/TF FP32 agreement, in one process without Ray: for a machine where starting a
Ray cluster is not possible, or to check the sweep's numbers.

    python benchmarks/gptj_tf_int8_rows.py [--model gptj-ref] [--max-samples 300]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gptj-ref")
    ap.add_argument("--max-samples", type=int, default=300)
    ap.add_argument("--out", default="gptj_tf_int8_rows.json")
    args = ap.parse_args()
    import torch

    from gptj_tf_int8 import SEED_COLUMNS, seed_rows
    from sweeper.data import load_training_text
    from sweeper.jobs import JobContext
    from sweeper.models.loading import load_model
    from sweeper.models.tf_export import export_loaded
    from sweeper.recipes.inc_static import IncStaticConfig, quantize_tf
    from sweeper.tasks.lambada import LambadaTask, lambada
    from sweeper.tasks.runtime_agreement import compare_runtimes
    from sweeper.reports.tracking import format_table

    task = LambadaTask(objective="lambada_ppl" if args.model.endswith("-ref") else "lambada_acc",
                       max_samples=args.max_samples, batch_size=16, timing_batch_size=8, warmup_runs=3, timed_runs=10)
    agreement = compare_runtimes(args.model, task)
    print(json.dumps({n: {k: r[k] for k in ("lambada_acc", "lambada_ppl", "latency_ms", "samples_per_s")}
                      for n, r in agreement["runtimes"].items()}), flush=True)
    print(json.dumps({k: agreement[k] for k in ("max_abs_diff", "max_rel_diff")}), flush=True)
    loaded = load_model(args.model)
    cache = {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = JobContext(device=torch.device("cpu"), tokenizer=loaded.tokenizer, train_text=load_training_text(),
                         cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()), workdir=tmp)
        fp32 = export_loaded(loaded, Path(tmp) / "fp32")
        int8 = quantize_tf(fp32, IncStaticConfig(), ctx)
        trials = [{"status": "TERMINATED", "config": {"precision": "fp32"}, "metrics": lambada(fp32, task, ctx)}]
        try:
            trials.append({"status": "TERMINATED", "config": {"precision": "int8"}, "metrics": lambada(int8.model, task, ctx)})
        except Exception as exc:  # noqa: BLE001 - the FP32 row and the agreement still count
            print(f"INT8 row failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
        rows = seed_rows({"model": args.model, "trials": trials})
    print(format_table(rows, SEED_COLUMNS), flush=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "runtime_agreement": agreement, "task": vars(task)
                                          if hasattr(task, "__dict__") else str(task)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
