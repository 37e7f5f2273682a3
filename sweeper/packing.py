"""workers_per_device="auto": how many workers share one GPU, measured before the sweep.

Small trials leave most of a large GPU idle, but how many can share one depends on the
trial (its memory, how much of it is host-side Python) and on the host. So it is measured
on the sweep's own first trial, on one GPU held in a placement group: first one worker
with the whole GPU (the 1-worker configuration, and the memory one worker needs), then a
pool of as many workers as that memory allows (each capped at its share, as the sweep's
would be), all warmed at once, of which 2, 4, ... run the trial `PROBE_ROUNDS` times back
to back; a level's throughput is its jobs over its wall seconds. The next level is tried
while the last gained at least `MIN_GAIN` over the best before it; the choice is the
fewest workers within `TIE` of the best throughput. Both pools are gone before the sweep's
own starts.

The cost: two cold starts (one worker, then the larger pool at once) and PROBE_ROUNDS
job durations per level: worth it for a sweep of many short trials, not for a handful of
long ones (name the number there).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from .errors import SweeperError

PROBE_ROUNDS = 2
MAX_WORKERS = 8  # the most workers auto puts on one GPU
MIN_GAIN = 0.05  # a level must beat the best before it by this fraction to try the next
TIE = 0.03  # the fewest workers within this fraction of the best throughput wins
MEMORY_HEADROOM = 0.9  # of the GPU's memory that N workers' footprints may fill
PROBE_TRIAL_ID = "workers-per-device-probe"


@dataclass
class PackingLevel:
    """One measured level: `workers` on one GPU ran `jobs` timed jobs in `seconds` (wall);
    `jobs_per_hour` = 3600 * jobs / seconds; `job_s` the mean timed job's seconds;
    `peak_mb`/`used_mb` the largest per-process GPU peak and device-wide use a job
    reported (MiB); `error` why the level failed (then it is not chosen)."""

    workers: int
    jobs: int = 0
    seconds: float = 0.0
    jobs_per_hour: float = 0.0
    job_s: float = 0.0
    peak_mb: float = 0.0
    used_mb: float = 0.0
    total_mb: float = 0.0
    error: str | None = None


@dataclass
class PackingChoice:
    """What the probe chose (`workers` per GPU) and why: every level it measured, its
    seconds in all, and the kind it measured."""

    kind: str
    workers: int
    levels: list[PackingLevel] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """Returns the choice as the summary records it."""
        return {"kind": self.kind, "workers_per_device": self.workers, "seconds": self.seconds,
                "levels": [asdict(lv) for lv in self.levels]}

    def table(self) -> str:
        """Returns the levels as a text table, the chosen one marked."""
        lines = ["workers/GPU  jobs/h  vs 1  job s  peak MiB  note"]
        base = next((lv.jobs_per_hour for lv in self.levels if not lv.error), 0.0) or 1.0
        for lv in self.levels:
            note = lv.error or ("chosen" if lv.workers == self.workers else "")
            lines.append(f"{lv.workers:>11}  {lv.jobs_per_hour:>6.0f}  {lv.jobs_per_hour / base:>4.2f}  "
                         f"{lv.job_s:>5.1f}  {lv.peak_mb:>8.0f}  {note}")
        return "\n".join(lines)


def memory_limit(first: PackingLevel, max_workers: int | None = None) -> int:
    """Returns how many workers the GPU's memory holds, judged from the one-worker level: its
    device-wide use (the worker's CUDA context included) and its allocator peak, whichever is
    larger, into MEMORY_HEADROOM of the GPU, at most `max_workers` (None: MAX_WORKERS)."""
    max_workers = MAX_WORKERS if max_workers is None else max_workers
    need = max(first.used_mb, first.peak_mb)
    if need <= 0 or first.total_mb <= 0:
        return max_workers
    return max(1, min(max_workers, math.floor(MEMORY_HEADROOM * first.total_mb / need)))


def next_level(levels: list[PackingLevel], max_workers: int | None = None) -> int | None:
    """Returns the next number of workers to measure after `levels` (in the order measured),
    or None when the probe is done: the last level failed, gained less than MIN_GAIN over
    the best before it, or memory or `max_workers` (None: MAX_WORKERS) leaves no room for more."""
    last = levels[-1]
    if last.error:
        return None
    before = [lv.jobs_per_hour for lv in levels[:-1] if not lv.error]
    if before and last.jobs_per_hour < (1 + MIN_GAIN) * max(before):
        return None
    room = memory_limit(levels[0], max_workers)
    nxt = min(2 * last.workers, room)
    return nxt if nxt > last.workers else None


def best_level(levels: list[PackingLevel]) -> int:
    """Returns the fewest workers whose throughput is within TIE of the best level's (fewer
    workers: less memory, less to lose to one out-of-memory error); raises SweeperError when
    every level failed."""
    ok = [lv for lv in levels if not lv.error]
    if not ok:
        raise SweeperError(f"workers_per_device='auto': the probe's trial failed on one worker: {levels[0].error}")
    top = max(lv.jobs_per_hour for lv in ok)
    return min(lv.workers for lv in ok if lv.jobs_per_hour >= (1 - TIE) * top)


def first_trial_config(exp) -> dict:
    """Returns the configuration of the sweep's first trial as the probe runs it: the first
    fixed trial over one draw of the search space (grids: their first value), drawn with the
    experiment's seed; a `tune.sample_from` field is left to the recipe's default."""
    import numpy as np
    from ray.tune.search.sample import Domain, Function

    rng = np.random.RandomState(exp.seed)
    config = {}
    for name, dom in exp.search_space.items():
        if isinstance(dom, dict) and isinstance(dom.get("grid_search"), list):
            config[name] = dom["grid_search"][0]
        elif isinstance(dom, Domain):
            if not isinstance(dom, Function):
                config[name] = dom.sample(random_state=rng)
        else:
            config[name] = dom
    if exp.trials:
        config.update(exp.trials[0])
    return config


@contextmanager
def probe_pool(kind, workers: int, plan, namespace: str, needs_provider: bool = False):
    """Yields a pool of `workers` workers of `kind`, each holding 1/`workers` of one GPU (all
    in one placement group bundle, so on one device), or None when no node can hold that
    bundle now; the pool and the group are gone on exit."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from .devices.kinds import shared_device
    from .devices.pool import start_pool, stop_pool

    shared = shared_device(kind, workers)
    bundle = {"GPU": kind.resources["GPU"], **{r: a * workers for r, a in shared.resources.items() if r != "GPU" and a > 0}}
    pg = placement_group([bundle])
    try:
        try:
            ray.get(pg.ready(), timeout=10 * plan.liveness.call_timeout_s)
        except Exception:  # noqa: BLE001 - a busy or too small cluster
            yield None
            return
        ns = f"{namespace}-pack{workers}"
        pool = start_pool({kind.name: workers}, ns, plan.liveness, kinds={kind.name: shared},
                          needs_provider=needs_provider, placement_group=pg)
        try:
            yield pool
        finally:
            stop_pool(pool, ns, plan.liveness)
    finally:
        remove_placement_group(pg)


def run_level(pool, kind_name: str, workers: int, plan, spec, rounds: int) -> PackingLevel:
    """Returns the level of `workers` jobs at a time on `pool`: `workers` x `rounds` runs of
    `spec`, `workers` at a time, while the wall clock runs."""
    from .trial import run_pool_jobs

    level = PackingLevel(workers)
    t0 = time.monotonic()
    outcomes = run_pool_jobs(pool, plan, [(kind_name, spec)] * (workers * rounds), workers)
    level.seconds = time.monotonic() - t0
    failed = [o for o in outcomes if o.error]
    if failed:
        level.error = failed[0].error.splitlines()[0][:300]
        return level
    if any(o.metrics.get("oom_retries") for o in outcomes):
        level.error = f"out of memory at {workers} workers (the job halved its batch)"
        return level
    level.jobs = len(outcomes)
    level.jobs_per_hour = 3600.0 * len(outcomes) / level.seconds
    level.job_s = sum(o.seconds for o in outcomes) / len(outcomes)
    level.peak_mb = max(o.info.get("gpu_peak_mb", 0.0) for o in outcomes)
    level.used_mb = max(o.info.get("gpu_used_mb", 0.0) for o in outcomes)
    level.total_mb = max(o.info.get("gpu_total_mb", 0.0) for o in outcomes)
    return level


NO_ROOM = "no node could hold one GPU for the probe"


def choose_workers_per_device(exp, kind, plan, namespace: str, max_workers: int | None = None,
                              log=print) -> PackingChoice:
    """Measures levels of workers per GPU for `kind` on the sweep's first trial (see the
    module's docstring), at most `max_workers` (None: MAX_WORKERS), and returns the choice;
    raises SweeperError when the trial fails on a single worker."""
    t0 = time.monotonic()
    config = first_trial_config(exp)
    _, spec = plan.trial_job(config, PROBE_TRIAL_ID)
    log(f"[sweeper] workers_per_device=auto: measuring the first trial with 1, 2, 4, ... workers on one {kind.name} "
        f"device ({PROBE_ROUNDS} timed jobs per worker and level, after one to warm each worker)")
    onnx = exp.model_format == "onnx"
    rounds = PROBE_ROUNDS

    def logged(lv: PackingLevel) -> PackingLevel:
        log(f"[sweeper]   {lv.workers} worker(s) per device: " + (lv.error or f"{lv.jobs_per_hour:.0f} jobs/h "
            f"(job {lv.job_s:.1f} s, peak {lv.peak_mb:.0f} MiB)"))
        return lv

    # one worker alone, with the whole GPU: the sweep's 1-worker configuration, and the
    # memory a worker needs; then one pool of as many workers as that memory allows, all
    # warmed at once, whose first N run each level
    with probe_pool(kind, 1, plan, namespace, onnx) as pool:
        if pool is None:
            raise SweeperError(f"workers_per_device='auto': {NO_ROOM} ({kind.name})")
        warm = run_level(pool, kind.name, 1, plan, spec, 1)
        levels = [logged(warm if warm.error else run_level(pool, kind.name, 1, plan, spec, rounds))]
    n = next_level(levels, max_workers)
    if n is not None:
        most = memory_limit(levels[0], max_workers)
        with probe_pool(kind, most, plan, namespace, onnx) as pool:
            warm = run_level(pool, kind.name, most, plan, spec, 1) if pool is not None else PackingLevel(most, error=NO_ROOM)
            if warm.error:
                levels.append(logged(warm))
                n = None
            while n is not None:
                levels.append(logged(run_level(pool, kind.name, n, plan, spec, rounds)))
                n = next_level(levels, max_workers)
    choice = PackingChoice(kind.name, best_level(levels), levels, time.monotonic() - t0)
    log(f"[sweeper] workers_per_device=auto: {choice.workers} per device ({choice.seconds:.0f} s of probing)")
    return choice
