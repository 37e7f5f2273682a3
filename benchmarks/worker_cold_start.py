"""What a device worker pays once: its jobs' seconds in order, on fresh workers, one run.

Starts a local Ray and, twice, a pool of one fresh worker on --device: the first runs the
FP32 baseline and then --jobs QAT trials (the gpu_packing QAT workload's first trial), the
second runs only the trials. Prints a table (pool start, then each job's seconds, from asking
for the worker to the job's end) and the ratio of the first QAT trial to the last, and of
a cold QAT trial (on a fresh worker) to the last; before them, one plain process's seconds
to import torch and start CUDA.

    python benchmarks/worker_cold_start.py --device cuda
"""
from __future__ import annotations

import argparse
import os
import time

# gpu_packing (beside this file) puts the repository on sys.path and sets the offline defaults
from gpu_packing import trials_for


def plain_process_seconds(device: str) -> tuple[float, float]:
    """Returns (seconds to import torch, seconds to start `device`) in this process."""
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    torch.zeros(1, device=device)
    return t1 - t0, time.perf_counter() - t1


def pool_row(plan, spec_of: dict, order: list[str], namespace: str, device: str) -> list[tuple[str, float]]:
    """Returns [(step, seconds)] for a fresh one-worker pool running `order` (names of
    `spec_of`), its start first."""
    from sweeper.devices.pool import start_pool, stop_pool
    from sweeper.trial import run_pool_job

    t = time.perf_counter()
    pool = start_pool({device: 1}, namespace, plan.liveness)
    row = [("pool start", time.perf_counter() - t)]
    try:
        for name in order:
            out = run_pool_job(pool, plan, device, spec_of[name])
            if out.error:
                raise RuntimeError(f"{name} failed: {out.error}")
            row.append((name, out.seconds))
    finally:
        stop_pool(pool, namespace, plan.liveness)
    return row


def main(argv=None) -> int:
    """Measures both pools; prints the table and the ratios; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--jobs", type=int, default=3, help="QAT trials after the baseline")
    ap.add_argument("--steps", type=int, default=10, help="QAT training steps per trial")
    args = ap.parse_args(argv)
    torch_s, start_s = plain_process_seconds(args.device)

    import ray

    from sweep_throughput import start_local_ray, trial_space
    from sweeper.experiment import Experiment
    from sweeper.plan import SweepPlan
    from sweeper.tasks import WikiText2PPL

    wl, trials = trials_for("qat", 1, steps=args.steps)
    exp = Experiment(name="cold_start", model=wl["model"], recipe=wl["recipe"], task=WikiText2PPL(**wl["task"]),
                     search_space=trial_space(trials), fixed=dict(wl["fixed"]), trials=trials, device=args.device,
                     workers=1, num_samples=0, scheduler="fifo", seed=0, wandb_project="sweeper-bench").validate()
    os.environ.pop("RAY_ADDRESS", None)
    start_local_ray(args.device, sweeper_trial=True)
    try:
        plan = SweepPlan.of(exp, "cold-start", args.device)
        spec_of = {"baseline": plan.job_spec(None), "qat": plan.trial_job(dict(trials[0]), "cold-start")[1]}
        after_baseline = pool_row(plan, spec_of, ["baseline"] + ["qat"] * args.jobs, "cold-start-a", args.device)
        qat_only = pool_row(plan, spec_of, ["qat"] * args.jobs, "cold-start-b", args.device)
    finally:
        ray.shutdown()
    print(f"\nplain process: import torch {torch_s:.1f} s, start {args.device} {start_s:.1f} s")
    for label, row in (("fresh worker, baseline first", after_baseline), ("fresh worker, trials only", qat_only)):
        print(f"{label:<29}  " + "  ".join(f"{name} {s:.1f} s" for name, s in row))
    last = after_baseline[-1][1]
    print(f"first trial after the baseline / last trial: {after_baseline[2][1] / last:.2f}x; "
          f"a fresh worker's first trial / last trial: {qat_only[1][1] / last:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
