"""The device pool: a named Ray actor that starts the device workers and leases them
to trials, one job per worker at a time.

A trial calls `submit(kind, spec)`; the pool waits for a free worker of that kind, starts
the job there and returns the worker handle and job id. The worker tells the pool when
the job ends (`release`). `cancel_trial` stops a trial's job at once (ASHA stops, errors).
"""
from __future__ import annotations

import asyncio
import time

POOL_ACTOR_NAME = "sweeper-device-pool"


class DevicePool:
    """Async Ray actor class (wrapped with ray.remote by `start_pool`)."""

    def __init__(self, workers_per_kind: dict[str, int], namespace: str, heartbeat_timeout_s: float = 30.0,
                 kinds: dict | None = None, needs_provider: bool = False):
        import ray

        from .kinds import get_kind
        from .worker import DeviceWorker

        kinds = dict(kinds or {})  # DeviceKind objects: user kinds are not registered in this process

        self._handles: dict[str, object] = {}
        self._kind_of: dict[str, str] = {}
        self._free: dict[str, asyncio.Queue] = {}
        self._running: dict[str, tuple[str, str]] = {}  # trial_id -> (worker_id, job_id)
        self._cancelled: set[str] = set()
        self._busy: set[str] = set()
        self._failures: dict[str, str] = {}
        self._attempts: dict[str, int] = {}
        self.submit_waits: list[float] = []
        # seconds a worker sat free while a trial was already waiting for it (dispatch latency)
        self.idle_gaps: list[float] = []
        self._freed_at: dict[str, float] = {}
        remote_worker = ray.remote(DeviceWorker)
        for kind_name, count in workers_per_kind.items():
            kind = kinds.get(kind_name) or get_kind(kind_name)
            self._free[kind_name] = asyncio.Queue()
            for i in range(count):
                wid = f"{kind_name}-{i}"
                handle = remote_worker.options(
                    name=f"sweeper-worker-{wid}", namespace=namespace, max_concurrency=16,
                    max_restarts=-1, **kind.actor_options(),
                ).remote(wid, kind, POOL_ACTOR_NAME, namespace, heartbeat_timeout_s, needs_provider)
                self._handles[wid] = handle
                self._kind_of[wid] = kind_name
                self._free[kind_name].put_nowait(wid)

    async def ready(self) -> list[dict]:
        """Waits until every worker has started; returns their info dicts (a worker that
        cannot serve its kind on its node says why in "start_error")."""
        return list(await asyncio.gather(*[h.info.remote() for h in self._handles.values()]))

    def worker_names(self) -> list[str]:
        """Returns the Ray actor names of the workers (for tearing a failed pool down)."""
        return [f"sweeper-worker-{wid}" for wid in self._handles]

    async def submit(self, kind: str, spec) -> tuple[object, str, str, float]:
        """Starts `spec` on the next free worker of `kind`; returns (worker handle, worker id,
        job id, seconds spent queued for a free worker). Waits while all workers of the
        kind are busy."""
        t0 = time.monotonic()
        while True:
            wid = await self._free[kind].get()
            got = time.monotonic()
            if spec.trial_id and spec.trial_id in self._cancelled:
                self._free[kind].put_nowait(wid)
                raise RuntimeError(f"trial {spec.trial_id} was cancelled before it started")
            self._busy.add(wid)
            try:
                job_id = await self._handles[wid].start_job.remote(spec)
            except Exception as exc:  # worker died between jobs: Ray restarts it and it re-registers
                print(f"[sweeper] pool: could not start a job on {wid}: {type(exc).__name__}: {exc}", flush=True)
                continue
            now = time.monotonic()
            self.submit_waits.append(now - t0)
            freed = self._freed_at.pop(wid, None)
            if freed is not None and t0 < freed:  # a trial was waiting when the worker freed up
                self.idle_gaps.append(now - freed)
            if spec.trial_id:
                self._running[spec.trial_id] = (wid, job_id)
                self._attempts[spec.trial_id] = self._attempts.get(spec.trial_id, 0) + 1
            return self._handles[wid], wid, job_id, got - t0

    def release(self, worker_id: str) -> None:
        """Marks a busy worker free again (called by the worker when its job ends)."""
        for trial, (wid, _) in list(self._running.items()):
            if wid == worker_id:
                del self._running[trial]
        if worker_id in self._busy:
            self._busy.discard(worker_id)
            self._freed_at[worker_id] = time.monotonic()
            self._free[self._kind_of[worker_id]].put_nowait(worker_id)

    def worker_restarted(self, worker_id: str) -> None:
        """Called by a worker that Ray restarted after it died: if it died mid-job the pool
        still books it busy; it is free again now."""
        self.release(worker_id)

    async def cancel_trial(self, trial_id: str) -> bool:
        """Cancels trial `trial_id`'s job (now, or before it starts); returns whether a
        running job was told to stop."""
        self._cancelled.add(trial_id)
        if trial_id in self._running:
            wid, job_id = self._running[trial_id]
            return await self._handles[wid].cancel.remote(job_id)
        return False

    async def stats(self) -> dict:
        """Returns {worker_id: info dict with counters} for every worker."""
        infos = await asyncio.gather(*[h.info.remote() for h in self._handles.values()], return_exceptions=True)
        return {wid: (i if isinstance(i, dict) else {"error": repr(i)}) for wid, i in zip(self._handles, infos)}

    def record_failure(self, trial_id: str, reason: str) -> None:
        """Remembers that trial `trial_id` failed deterministically (NaN metric, recipe error),
        so a retry by Tune's FailureConfig ends at once with the same reason."""
        self._failures[trial_id] = reason

    def known_failure(self, trial_id: str) -> str | None:
        """Returns the recorded deterministic failure of `trial_id`, or None."""
        return self._failures.get(trial_id)

    def attempts(self) -> dict[str, int]:
        """Returns {trial_id: jobs started for it} (more than 1: retried after a failure)."""
        return dict(self._attempts)

    def free_counts(self) -> dict[str, int]:
        """Returns the number of idle workers per kind."""
        return {k: q.qsize() for k, q in self._free.items()}

    def idle_gap_times(self) -> list[float]:
        """Returns the seconds between a worker's job ending and its next job starting, for
        every job that was already queued when the worker freed up."""
        return list(self.idle_gaps)

    def submit_wait_times(self) -> list[float]:
        """Returns the seconds each submit waited for a free worker and a started job."""
        return list(self.submit_waits)


def start_pool(workers_per_kind: dict[str, int], namespace: str, heartbeat_timeout_s: float = 30.0,
               kinds: dict | None = None, needs_provider: bool = False):
    """Starts the named pool actor and its workers (`kinds`: name -> DeviceKind for kinds not
    built in; `needs_provider`: workers refuse to start without their kind's onnxruntime
    execution provider); returns the pool handle once all workers are up, or raises
    RuntimeError with the first worker's one-line reason."""
    import ray

    pool = ray.remote(DevicePool).options(name=POOL_ACTOR_NAME, namespace=namespace, num_cpus=0,
                                          max_concurrency=1000).remote(workers_per_kind, namespace, heartbeat_timeout_s, kinds,
                                                                        needs_provider)
    infos = ray.get(pool.ready.remote())
    failed = [i["start_error"] for i in infos if i.get("start_error")]
    if failed:
        from ..errors import DeviceUnavailable

        for name in ray.get(pool.worker_names.remote()):
            ray.kill(ray.get_actor(name, namespace=namespace))
        ray.kill(pool)
        raise DeviceUnavailable(failed[0])
    return pool
