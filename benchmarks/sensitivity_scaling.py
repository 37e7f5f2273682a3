"""Per-layer sensitivity stage: 1 worker against N, and its ranking across calibration seeds.

Runs `sweeper sensitivity`'s stage (GPTQ 2-bit, block 32, one job per weight MatMul) on
the reference OPT model, each configuration in a fresh process with its own local Ray:
first with one CPU worker, then with each N of --workers, with calibration seed 0; then
once more with N workers and each other seed of --seeds. Prints the wall time of each
stage (from the first job asked for to the last result), the speed-up over one worker
with its ratio to N, and Spearman's rank correlation of the rankings: same seed on 1 and N
workers (the jobs are deterministic: 1.0 expected), and seed 0 against each other seed.

    python benchmarks/sensitivity_scaling.py --model opt-ref-m --workers 8 --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = {"algorithm": "gptq", "bits": 2, "block_size": 32}


def one_stage(model: str, workers: int, seed: int, max_tokens: int, context: int, out: Path) -> None:
    """Runs one stage here (a fresh process) and writes its result JSON to `out`."""
    from sweeper.experiment import Experiment
    from sweeper.sweep import run_sensitivity
    from sweeper.tasks import WikiText2PPL

    task = WikiText2PPL(split="test", context_length=context, stride=context, batch_size=8, max_tokens=max_tokens)
    exp = Experiment(name=f"sensitivity_w{workers}_s{seed}", model=model, recipe="onnx_ptq", task=task,
                     sensitivity={**PROBE, "seed": seed}, fixed={"calibration_samples": 64},
                     search_space={"algorithm": "rtn", "bits": 4, "block_size": 32}, num_samples=1,
                     workers=workers, device="cpu", wandb_project="sweeper-bench")
    result = run_sensitivity(exp, results_dir=out.parent / "results", quiet=True)
    out.write_text(json.dumps(result, default=str))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-ref-m")
    ap.add_argument("--workers", default="8", help="comma list of worker counts to compare with 1")
    ap.add_argument("--seeds", default="0,1", help="calibration seeds; the first is the timing runs'")
    ap.add_argument("--max-tokens", type=int, default=16384, help="test tokens each layer's job evaluates")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--json", help="write every stage's result here")
    ap.add_argument("--one", nargs=3, type=int, metavar=("WORKERS", "SEED", "UNUSED"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one_stage(args.model, args.one[0], args.one[1], args.max_tokens, args.context, Path(args.out))
        return 0
    from sweeper.sensitivity import rank_correlation

    counts = [int(w) for w in args.workers.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [(1, seeds[0])] + [(w, seeds[0]) for w in counts] + [(counts[-1], s) for s in seeds[1:]]
    tmp = Path(tempfile.mkdtemp(prefix="sens-bench-"))
    results = {}
    for workers, seed in runs:
        out = tmp / f"w{workers}_s{seed}.json"
        cmd = [sys.executable, __file__, "--model", args.model, "--max-tokens", str(args.max_tokens),
               "--context", str(args.context), "--one", str(workers), str(seed), "0", "--out", str(out)]
        print(f"[bench] stage with {workers} worker(s), seed {seed} ...", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
        results[(workers, seed)] = r = json.loads(out.read_text())
        print(f"[bench] {workers} worker(s), seed {seed}: stage {r['seconds']:.1f} s, first job {r['first_job_s']:.1f} s, "
              f"layer jobs {r['layer_jobs_s']:.1f} s (busy {r['layer_jobs_busy_s']:.1f} s)", flush=True)
    base = results[(1, seeds[0])]
    print(f"\nsensitivity stage, {args.model}, {len(base['ranking'])} layers, GPTQ 2-bit b32, "
          f"{args.max_tokens} test tokens per job, one CPU thread per worker")
    print("stage s: wall clock of the whole stage; first s: its first job (model load, ONNX export: serial); "
          "layers s: the layer jobs the pool spreads")
    print(f"{'workers':>7}  {'seed':>4}  {'jobs':>4}  {'stage s':>8}  {'first s':>7}  {'layers s':>8}  "
          f"{'stage x':>7}  {'layers x':>8}  {'layers x / N':>12}  top 3")
    for (workers, seed), r in results.items():
        up, lup = base["seconds"] / r["seconds"], base["layer_jobs_s"] / r["layer_jobs_s"]
        print(f"{workers:>7}  {seed:>4}  {r['jobs']:>4}  {r['seconds']:>8.1f}  {r['first_job_s']:>7.1f}  "
              f"{r['layer_jobs_s']:>8.1f}  {up:>7.2f}  {lup:>8.2f}  {lup / workers:>12.2f}  " + ", ".join(r["ranking"][:3]))
    print()
    for workers in counts:
        print(f"rank correlation, seed {seeds[0]}, 1 vs {workers} workers: "
              f"{rank_correlation(base['ranking'], results[(workers, seeds[0])]['ranking']):.4f}")
    for seed in seeds[1:]:
        a, b = results[(counts[-1], seeds[0])], results[(counts[-1], seed)]
        print(f"rank correlation, seed {seeds[0]} vs seed {seed}: {rank_correlation(a['ranking'], b['ranking']):.4f} "
              f"(top 5 shared: {len(set(a['ranking'][:5]) & set(b['ranking'][:5]))})")
    if args.json:
        Path(args.json).write_text(json.dumps({f"w{w}_s{s}": r for (w, s), r in results.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
