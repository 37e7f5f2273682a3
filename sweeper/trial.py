"""One trial of a sweep: a light Tune function that leases a device worker from the pool,
starts its job there and relays the job's metric records to `tune.report`.

Every remote call here is bounded. The job's events are read by a thread of their own
(`JobFeed`), so the polls that are the trial's heartbeat never wait on a slow report (a
checkpoint upload, a W&B callback). When the worker dies or is killed under the job, the
feed asks the pool how the job ended; a job whose end the pool kept is finished as if
nothing happened, any other is retried by Tune (per max_failures).
"""
from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .devices.pool import POOL_ACTOR_NAME
from .errors import SweeperError
from .plan import SweepPlan


class JobLost(SweeperError, RuntimeError):
    """A job's worker process died (or was killed) before the job ended."""


class JobTimedOut(SweeperError, TimeoutError):
    """A job ran past its time limit; the pool killed its worker process."""


@dataclass(frozen=True)
class Started:
    """A job started on a leased worker."""

    worker: object  # the worker's actor handle
    worker_id: str
    job_id: str
    queued_s: float  # seconds spent waiting for a free worker


def call(ref, plan: SweepPlan):
    """Returns ray.get(ref), waiting at most the plan's call timeout."""
    import ray

    return ray.get(ref, timeout=plan.liveness.call_timeout_s)


def acquire(pool, kind: str, spec, plan: SweepPlan, timeout_s: float) -> Started:
    """Returns the job `spec` started on a worker of `kind`, with a time limit of
    `timeout_s` seconds. Each call to the pool is bounded; while every worker is busy the
    trial asks again (each job they run is bounded by its limit, so a worker always comes)."""
    import ray

    wait_s = plan.liveness.call_timeout_s
    while True:
        got = ray.get(pool.acquire.remote(kind, spec, wait_s, timeout_s),
                      timeout=wait_s + 2 * plan.liveness.call_timeout_s)
        if got is not None:
            return Started(*got)


class JobFeed:
    """The events of a started job, in order, until it ends. A thread polls the worker
    (the trial's heartbeat) into a queue; iterating yields them. On the job's end the feed
    acknowledges it to the pool, which frees the worker. Raises JobLost or JobTimedOut
    from the iteration when the pool ended the job; use it as a context manager, so that
    leaving early cancels the job."""

    _END = object()

    def __init__(self, pool, started: Started, plan: SweepPlan, timeout_s: float):
        self.pool, self.started, self.plan, self.timeout_s = pool, started, plan, timeout_s
        self.acked = False
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        threading.Thread(target=self._pump, daemon=True, name=f"feed-{started.job_id}").start()

    def __iter__(self):
        while True:
            ev = self._events.get()
            if ev is self._END:
                return
            if isinstance(ev, BaseException):
                raise ev
            yield ev

    def __enter__(self) -> "JobFeed":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if not self.acked:  # the trial is leaving (raised, or Tune stopped it): stop the job now
            self.pool.cancel_job.remote(self.started.job_id)

    def _pump(self) -> None:
        try:
            self._relay()
            self._events.put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread
            self._events.put(exc)

    def _relay(self) -> None:
        live, s = self.plan.liveness, self.started
        # past the job's limit the pool has killed it; this only guards against a lost pool
        backstop = time.monotonic() + self.timeout_s + 3 * live.call_timeout_s
        cursor = 0
        while not self._stop.is_set():
            if time.monotonic() > backstop:
                raise JobLost(f"job {s.job_id} on {s.worker_id}: no end {self.timeout_s:g} s "
                              f"after its start, and the pool does not know it")
            events, state, reason = self._read(cursor)
            cursor += len(events)
            for ev in events:
                self._events.put(ev)
            if state is None:  # a poll timed out and the pool does not know the job's end
                time.sleep(min(0.2, live.poll_s))
            elif state != "RUNNING":
                call(self.pool.ack.remote(s.job_id), self.plan)  # frees the worker (a no-op for a lost one)
                self.acked = True
                if state == "TIMEOUT":
                    raise JobTimedOut(reason)
                if state == "LOST":
                    raise JobLost(reason)
                return

    def _read(self, cursor: int) -> tuple[list, str | None, str]:
        """Returns (events after `cursor`, state, reason) from the worker, else from the
        pool's record of the job's end; state None when neither can tell yet."""
        import ray

        from ray.exceptions import RayActorError

        live, s = self.plan.liveness, self.started
        died = None
        try:
            events, state = ray.get(s.worker.poll.remote(s.job_id, cursor, live.poll_s),
                                    timeout=live.poll_s + live.call_timeout_s)
            if state != "UNKNOWN":
                return events, state, ""
            died = f"worker {s.worker_id} was restarted under job {s.job_id}"
        except RayActorError as exc:  # its process died (or restarts): the job went with it
            died = f"worker {s.worker_id}'s process died under job {s.job_id} ({type(exc).__name__})"
        except Exception:  # noqa: BLE001 - a poll timed out: the pool's probe decides
            pass
        out = call(self.pool.outcome.remote(s.job_id, cursor), self.plan)
        if out is not None:  # the pool kept the job's end, or ended it itself
            return out[0], out[1], out[2]
        if not died:
            return [], None, ""
        # a job's end reaches the pool before its process can die with it ended, so none
        # kept there means none came: the job is lost, and the pool recovers its worker
        call(self.pool.job_lost.remote(s.job_id, died), self.plan)
        return [], "LOST", died


def flatten_metrics(metrics: dict) -> dict:
    """Returns `metrics` with nested dicts flattened to "key/subkey" (None values dropped)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items() if vv is not None})
        else:
            out[k] = v
    return out


def report_metrics(ev: dict, extra: dict, plan: SweepPlan, pool, trial_id: str) -> None:
    """Reports a job's "metrics" event to Tune (with its artifacts as the checkpoint, when
    it has any), plus `extra`. Raises FloatingPointError (recorded as the trial's
    deterministic failure) when the objective is not a finite number."""
    from ray import tune

    m = {**flatten_metrics(ev["metrics"]), **extra}
    value = m.get(plan.metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        reason = f"{plan.metric} is {value!r} at epoch {m.get('epoch', '-')}"
        call(pool.record_failure.remote(trial_id, reason), plan)
        raise FloatingPointError(reason)
    t0 = time.monotonic()
    if not ev.get("artifacts"):
        tune.report(m)
    else:
        with tempfile.TemporaryDirectory(prefix="sweeper-artifacts-") as tmp:
            for name, data in ev["artifacts"].items():
                (Path(tmp) / name).write_bytes(data)
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(tmp))
    took = time.monotonic() - t0
    if took > plan.liveness.heartbeat_timeout_s:  # harmless (the feed kept polling), but worth a line
        print(f"[sweeper] trial {trial_id}: a report took {took:.1f} s, longer than the "
              f"{plan.liveness.heartbeat_timeout_s:g} s heartbeat; the job kept running", flush=True)


def trial_main(config: dict, plan: SweepPlan) -> None:
    """The Tune function trainable: runs one trial's job on a pooled worker and reports
    each of its metric records. Raises (trial ERROR, or a retry per max_failures) if the
    job fails, times out, is lost with its worker, or reports a NaN objective."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    pool = ray.get_actor(POOL_ACTOR_NAME, namespace=plan.namespace)
    known = call(pool.known_failure.remote(trial_id), plan)
    if known:  # deterministic failure seen on an earlier attempt: don't burn the device again
        raise RuntimeError(known)
    kind, spec = plan.trial_job(config, trial_id)
    t0 = time.time()
    started = acquire(pool, kind, spec, plan, plan.job_timeout_s)
    # Trials may be started ahead of free workers; the wait for one is queueing, not overhead.
    extra = {"worker_id": started.worker_id, "job_start_overhead_s": time.time() - t0 - started.queued_s,
             "job_queue_wait_s": started.queued_s}
    with JobFeed(pool, started, plan, plan.job_timeout_s) as feed:
        for ev in feed:
            if ev["type"] == "metrics":
                report_metrics(ev, extra, plan, pool, trial_id)
            elif ev["type"] == "error":
                call(pool.record_failure.remote(trial_id, ev["error"]), plan)
                raise RuntimeError(f"job failed on {started.worker_id}: {ev['error']}")


@dataclass
class PoolJobOutcome:
    """How a job run outside Tune ended: its last metrics, the final event's info, and the
    error (None when it finished)."""

    metrics: dict
    info: dict
    error: str | None
    worker_id: str
    seconds: float  # from asking for a worker to the job's end


def run_pool_job(pool, plan: SweepPlan, kind: str, spec, timeout_s: float | None = None) -> PoolJobOutcome:
    """Runs `spec` on a worker of `kind` (waiting for a free one) and returns its outcome;
    a failed, lost or timed-out job is an outcome with an error, not an exception."""
    t0 = time.monotonic()
    timeout_s = plan.job_timeout_s if timeout_s is None else timeout_s
    started = acquire(pool, kind, spec, plan, timeout_s)
    metrics, info, error = {}, {}, None
    try:
        with JobFeed(pool, started, plan, timeout_s) as feed:
            for ev in feed:
                if ev["type"] == "metrics":
                    metrics = ev["metrics"]
                elif ev["type"] == "done":
                    info = ev.get("info") or {}
                elif ev["type"] == "error":
                    error = ev["error"]
                elif ev["type"] == "cancelled":
                    error = "cancelled"
    except (JobLost, JobTimedOut) as exc:
        error = str(exc)
    return PoolJobOutcome(metrics, info, error, started.worker_id, time.monotonic() - t0)


def run_pool_jobs(pool, plan: SweepPlan, jobs: list, at_once: int, timeout_s: float | None = None,
                  ended=None) -> list[PoolJobOutcome]:
    """Runs `jobs` ((device kind, JobSpec) pairs) on the pool, at most `at_once` at a time,
    started in the order given; calls `ended(index, outcome)` as each ends, one call at a
    time; returns the outcomes in the order of `jobs` (failures are outcomes with an error)."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def one(index: int) -> PoolJobOutcome:
        kind, spec = jobs[index]
        outcome = run_pool_job(pool, plan, kind, spec, timeout_s)
        if ended is not None:
            with lock:
                ended(index, outcome)
        return outcome

    with ThreadPoolExecutor(max(1, min(at_once, len(jobs))), thread_name_prefix="pool-jobs") as threads:
        return list(threads.map(one, range(len(jobs))))


def run_baseline(pool, plan: SweepPlan, workers: dict[str, int] | None = None, log=print) -> dict:
    """Returns the FP32 model's metrics on the plan's task, measured on a worker of the
    plan's device kind. With `workers` ({kind: count}), every worker runs the same job at
    once: each then has the model, its export and the task's data loaded before its first
    trial, while the baseline runs anyway, instead of every worker but one starting cold
    after it. Workers whose metrics differ from the baseline's are named in a line."""
    kinds = [k for k, n in (workers or {plan.device: 1}).items() for _ in range(n)]
    kinds.remove(plan.device)
    kinds.insert(0, plan.device)
    spec = plan.job_spec(None)
    outs = run_pool_jobs(pool, plan, [(kind, spec) for kind in kinds], len(kinds), plan.baseline_timeout_s)
    if outs[0].error:
        raise SweeperError(f"baseline evaluation failed: {outs[0].error}")
    base = outs[0].metrics.get(plan.metric)
    for kind, out in zip(kinds[1:], outs[1:]):
        value = out.metrics.get(plan.metric)
        if out.error:
            log(f"[sweeper] worker {out.worker_id} ({kind}) could not evaluate the FP32 model: {out.error.splitlines()[0][:200]}")
        elif isinstance(base, (int, float)) and isinstance(value, (int, float)) and not math.isclose(value, base, rel_tol=1e-3):
            log(f"[sweeper] worker {out.worker_id} ({kind}): FP32 {plan.metric} {value:.6g} against the baseline's "
                f"{base:.6g} on {outs[0].worker_id} (a different device or package set gives different numbers)")
    return outs[0].metrics


