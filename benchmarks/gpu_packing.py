"""GPU sweeps: trials/hour against GPUs used and workers per GPU, same trials, one run.

Runs one fixed list of trials with sweeper.sweep.run_experiment once per configuration
(GPUs x workers per GPU), each on its own fresh local Ray that sees only those GPUs
(CUDA_VISIBLE_DEVICES set before Ray starts), and prints a table: GPUs, workers per GPU
("auto=N": the sweep's workers_per_device="auto" probe chose N), workers, trials done,
sweep seconds (from the pool's start to the last trial's end, the sweep's `elapsed_s`),
wall seconds (Ray start and the auto probe included), the probe's seconds, trials/hour on
the sweep seconds, the ratio to the first configuration, the workers' busy fraction (sum
of their busy seconds / (workers x sweep seconds)), the mean seconds of each worker's
first job (its cold start: the FP32 baseline, which every worker runs at once) and of the
later jobs (warm), the median delay from a trial's start to its job running on a worker,
and the largest relative difference of any trial's objective from the first
configuration's (the same trials on the same GPUs should agree to float noise).

Workloads (trial lists from benchmarks/sweep_throughput.py, repeated with lr scaled to
make --trials trials):
  qat   aimet QAT on gpt2-ref: 1 epoch of --steps steps (10), 2 calibration batches, seq_len 128,
        batch 8, no deployed-graph check (--deploy-check last_report adds it: CPU work,
        export and onnxruntime); WikiText2PPL(max_tokens=8192).
  eval  the same trials with epochs=0 and no deploy check: calibrate the QuantSim and
        evaluate it, the evaluation-heavy torch side (the ONNX sweeps' evaluation runs
        through onnxruntime, whose CUDA provider this machine's image lacks).

    python benchmarks/gpu_packing.py --workload qat --gpus 1 --per-gpu 1,2,4,8
    python benchmarks/gpu_packing.py --workload qat --gpus 1,2 --per-gpu 4    # 1 -> 2 GPUs
    python benchmarks/gpu_packing.py --workload qat --configs 1x1,1x2,1x4,1xauto
    # a sweep too long for one command: the later run's ratios against the first's 1x1 row
    python benchmarks/gpu_packing.py --configs 1x1 --trials 64 --steps 100 --out a.json
    python benchmarks/gpu_packing.py --configs 2x1,4x1 --trials 64 --steps 100 --against a.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
for p in (str(_REPO), str(_REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from sweep_throughput import METRIC, QAT_TRIALS, complete_trials, start_local_ray, trial_space  # noqa: E402


def trials_for(workload: str, n: int, deploy_check: str = "off", steps: int = 10) -> tuple[dict, list[dict]]:
    """Returns (the workload's fixed recipe fields and task kwargs, `n` trials) for
    "qat" or "eval" (QAT_TRIALS repeated with lr scaled by 1, 0.5, 0.25, ...); a QAT trial
    trains `steps` steps."""
    fixed = {"epochs": 1, "steps_per_epoch": steps, "calibration_batches": 2, "seq_len": 128, "batch_size": 8,
             "param_bw": 8, "input_quantization": True, "clamp_value": 30.0, "weight_decay": 0.0,
             "deploy_check": deploy_check}
    if workload == "eval":
        fixed.update(epochs=0, deploy_check="off")
    out = []
    for i in range(n):
        base = QAT_TRIALS[i % len(QAT_TRIALS)]
        out.append({**base, "lr": base["lr"] * 0.5 ** (i // len(QAT_TRIALS))})
    wl = {"name": workload, "model": "gpt2-ref", "recipe": "aimet_qat", "fixed": fixed,
          "task": {"split": "test", "batch_size": 8, "max_tokens": 8_192}, "trials": out}
    return wl, complete_trials(wl)


def job_seconds(job_logs: Path) -> tuple[list[float], list[float]]:
    """Returns (each worker's first job's seconds, every later job's seconds) from the
    workers' job logs (<run>/worker_jobs/<worker>.jsonl): the cold starts and the warm jobs."""
    cold, warm = [], []
    for f in sorted(job_logs.glob("*.jsonl")):
        starts, spans = {}, []
        for line in f.read_text().splitlines():
            ev = json.loads(line)
            if ev["event"] == "START":
                starts[ev["job_id"]] = ev["time"]
            elif ev["job_id"] in starts:
                spans.append((starts[ev["job_id"]], ev["time"] - starts[ev["job_id"]]))
        spans.sort()
        cold += [d for _, d in spans[:1]]
        warm += [d for _, d in spans[1:]]
    return cold, warm


def run_config(wl: dict, trials: list[dict], gpus: int, per_gpu, scratch: Path,
               keep: int | None = None) -> dict:
    """Runs the trials on `gpus` GPUs with `per_gpu` workers each ("auto": chosen by the
    sweep's probe; Tune keeping `keep` checkpoints per trial, None: all); returns the record."""
    import ray

    from sweeper.experiment import Experiment
    from sweeper.sweep import run_experiment
    from sweeper.tasks import WikiText2PPL

    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    exp = Experiment(name=f"pack_{wl['name']}_{gpus}g{per_gpu}w", model=wl["model"], recipe=wl["recipe"],
                     task=WikiText2PPL(**wl["task"]), search_space=trial_space(trials), fixed=dict(wl["fixed"]),
                     trials=trials, device="cuda", workers=None if per_gpu == "auto" else gpus * per_gpu,
                     workers_per_device=per_gpu, num_samples=0,
                     scheduler="fifo", max_failures=0, seed=0, wandb_project="sweeper-bench", checkpoints_to_keep=keep)
    t0 = time.time()
    start_local_ray("cuda", sweeper_trial=True)
    try:
        res = run_experiment(exp, results_dir=scratch / exp.name, verbose=0)
    finally:
        ray.shutdown()
    wall = time.time() - t0
    s = res.summary
    done = [t for t in s["trials"] if t["status"] == "TERMINATED"]
    sweep_s = s.get("elapsed_s") or wall
    busy = sum(w.get("busy_s", 0.0) for w in s["workers"].values())
    overheads = sorted(t["metrics"]["job_start_overhead_s"] for t in done
                       if isinstance(t["metrics"].get("job_start_overhead_s"), (int, float)))
    from sweeper.sweep import WORKER_JOB_LOGS

    cold, warm = job_seconds(res.results_dir / WORKER_JOB_LOGS)
    probe = next(iter(s.get("workers_per_device_auto", {}).values()), None)
    return {"gpus": gpus, "per_gpu": probe["workers_per_device"] if probe else per_gpu, "auto": probe is not None,
            "probe_s": probe["seconds"] if probe else 0.0, "probe": probe,
            "keep": keep, "workers": len(s["workers"]), "trials": len(s["trials"]),
            "busy_fraction": busy / (len(s["workers"]) * sweep_s),
            "cold_s_mean": sum(cold) / max(1, len(cold)), "warm_s_mean": sum(warm) / max(1, len(warm)),
            "start_overhead_median_s": overheads[len(overheads) // 2] if overheads else None,
            "done": len(done), "sweep_s": sweep_s, "wall_s": wall, "trials_per_hour": 3600.0 * len(done) / sweep_s,
            "errors": [t.get("error") for t in s["trials"] if t["status"] != "TERMINATED"][:3],
            "values": {json.dumps(t["config"], sort_keys=True, default=str): t["metrics"].get(METRIC) for t in done}}


def render(rows: list[dict]) -> str:
    """Returns the table of the configurations, ratios against the first."""
    first = rows[0]
    lines = ["gpus  per_gpu  workers  done  sweep_s  wall_s  probe_s  trials/h  ratio  busy  cold_s  warm_s  start_s  max_rel_diff_vs_first"]
    for r in rows:
        common = [k for k in r["values"] if k in first["values"] and first["values"][k]]
        diff = max((abs(r["values"][k] - first["values"][k]) / abs(first["values"][k]) for k in common), default=None)
        per_gpu = f"auto={r['per_gpu']}" if r.get("auto") else str(r["per_gpu"])
        lines.append(f"{r['gpus']:>4}  {per_gpu:>7}  {r['workers']:>7}  {r['done']:>4}  {r['sweep_s']:>7.1f}  "
                     f"{r['wall_s']:>6.1f}  {r['probe_s']:>7.1f}  {r['trials_per_hour']:>8.0f}  "
                     f"{r['trials_per_hour'] / first['trials_per_hour']:>5.2f}  {r['busy_fraction']:>4.0%}  "
                     f"{r['cold_s_mean']:>6.1f}  {r['warm_s_mean']:>6.1f}  {r['start_overhead_median_s'] or 0:>7.2f}  "
                     f"{'-' if diff is None else f'{diff:.2e}'}")
    return "\n".join(lines)


def per_gpu_of(text: str):
    """Returns a workers-per-GPU value from the command line: "auto" or an int."""
    return text if text == "auto" else int(text)


def main(argv=None) -> int:
    """Runs every (GPUs, workers per GPU) configuration asked for; prints the table; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("qat", "eval"), default="qat")
    ap.add_argument("--gpus", default="1", help="comma list of GPU counts, e.g. 1,2")
    ap.add_argument("--per-gpu", default="1,2,4", help="comma list of workers per GPU, e.g. 1,2,4,8,auto")
    ap.add_argument("--configs", help="explicit GPUSxPER_GPU list instead of the grid, e.g. 1x1,2x1,1x4,1xauto")
    ap.add_argument("--keep-checkpoints", type=int, help="Experiment.checkpoints_to_keep (default: all)")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="QAT training steps per trial (longer trials: the workers' "
                    "cold starts weigh less)")
    ap.add_argument("--deploy-check", default="off", choices=("off", "last_report", "every_report"))
    ap.add_argument("--out", help="write the records and the table as JSON here (rewritten after each configuration, "
                    "so a run stopped part-way keeps the configurations it finished)")
    ap.add_argument("--against", help="an earlier --out of this benchmark on the same machine: its rows come first "
                    "and the ratios are against its first row (one sweep too long for one command)")
    ap.add_argument("--stop-after-s", type=float, help="start no further configuration once this many seconds "
                    "have passed (the rest are listed as not run)")
    args = ap.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)
    wl, trials = trials_for(args.workload, args.trials, args.deploy_check, args.steps)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-packing-"))
    rows, skipped, t_start = [], [], time.time()
    head = f"workload {args.workload}, {len(trials)} trials, {args.steps} training steps each, " \
           f"checkpoints kept per trial: {args.keep_checkpoints or 'all'}"
    machine = device_name()
    earlier = []
    if args.against:
        before = json.loads(Path(args.against).read_text())
        if before["head"] != head:
            ap.error(f"--against {args.against} ran another sweep ({before['head']}); this one is: {head}")
        earlier = before["rows"]
        other = {r.get("device") for r in earlier} - {machine}
        if other:
            print(f"[bench] warning: --against rows from {', '.join(map(str, other))}, this machine is {machine}: "
                  f"ratios across machines mix their speeds", flush=True)
    try:
        if args.configs:
            grid = [(int(c.split("x")[0]), per_gpu_of(c.split("x")[1])) for c in args.configs.split(",")]
        else:
            grid = [(int(g), per_gpu_of(n)) for g in args.gpus.split(",") for n in args.per_gpu.split(",")]
        for g, n in grid:
            if args.stop_after_s is not None and time.time() - t_start > args.stop_after_s:
                skipped.append(f"{g}x{n}")
                continue
            print(f"[bench] {args.workload}: {len(trials)} trials on {g} GPU(s) x {n} worker(s)", flush=True)
            rows.append({**run_config(wl, trials, g, n, scratch, args.keep_checkpoints), "device": machine})
            print(f"[bench]   {rows[-1]['done']} done in {rows[-1]['sweep_s']:.1f}s "
                  f"({rows[-1]['trials_per_hour']:.0f} trials/h) {rows[-1]['errors'] or ''}", flush=True)
            if args.out:
                write_out(args.out, head, earlier + rows)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not earlier + rows:
        print(f"[bench] nothing run; not run: {', '.join(skipped)}")
        return 1
    table = render(earlier + rows)
    print(f"\n{machine}, {head}\n{table}", flush=True)
    if skipped:
        print(f"not run (past --stop-after-s): {', '.join(skipped)}")
    if args.out:
        write_out(args.out, head, earlier + rows)
    return 0


def device_name() -> str:
    """Returns "<GPU name> x<count>" of this machine's GPUs, whatever CUDA_VISIBLE_DEVICES a
    configuration set (nvidia-smi, so the driver never starts CUDA itself), or "cpu"."""
    import subprocess

    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    names = [n.strip() for n in names if n.strip()]
    return f"{names[0]} x{len(names)}" if names else "cpu"


def write_out(path: str, head: str, rows: list[dict]) -> None:
    """Writes the records and their table as JSON to `path`."""
    Path(path).write_text(json.dumps({"head": head, "rows": rows, "table": render(rows)}, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
