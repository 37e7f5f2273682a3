"""The device pool: a named Ray actor that starts the device workers, leases them to
trials one job at a time, and supervises them.

A trial calls `acquire(kind, spec, wait_s, timeout_s)`; the pool hands it the next free
worker of that kind with the job started there, or None after `wait_s` (the trial asks
again: no call waits unboundedly). The worker hands the job's end to the pool
(`job_ended`) before the job is seen ended; the trial reads the final events and
acknowledges them (`ack`), and only then is the worker free again.

A watchdog probes every leased worker and kills its process (Ray restarts it) when its
job overruns its time limit, when it stops answering, or when a cancelled job does not
stop; the job's trial then learns why from `outcome`. Every path that takes a worker
gives it back or hands it to recovery, which frees it once it answers again; `health`
reports the workers held for no live job ("stranded").
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from .liveness import Liveness

POOL_ACTOR_NAME = "sweeper-device-pool"


@dataclass
class Lease:
    """A worker out on one job, as the pool books it (times from time.monotonic)."""

    worker_id: str
    job_id: str
    trial_id: str
    pid: int  # the worker process that started the job; another pid there means it died
    timeout_s: float
    deadline: float
    ended_at: float | None = None  # the worker handed over the job's end
    cancelled_at: float | None = None


@dataclass
class Outcome:
    """How a job ended, kept for a trial that could not read it from its worker: the
    events from index `base` on and the final state ("DONE", "ERROR", "CANCELLED"; "LOST"
    or "TIMEOUT" when the pool ended it, with `reason`)."""

    state: str
    base: int = 0
    events: list = field(default_factory=list)
    reason: str = ""


@dataclass
class PoolCounters:
    """What the pool's supervision did in a sweep (counts)."""

    kills: int = 0  # worker processes killed by the watchdog
    timeouts: int = 0  # of which: a job past its time limit
    lost_jobs: int = 0  # jobs whose worker process died under them
    reclaimed: int = 0  # workers taken back from a trial that never acknowledged its job's end
    start_failures: int = 0  # start_job calls that failed or timed out


class DevicePool:
    """Async Ray actor class (wrapped with ray.remote by `start_pool`)."""

    def __init__(self, workers_per_kind: dict[str, int], namespace: str, liveness: Liveness | None = None,
                 kinds: dict | None = None, needs_provider: bool = False, job_log_dir: str | None = None,
                 placement_group=None):
        import ray

        from .kinds import get_kind
        from .worker import DeviceWorker

        kinds = dict(kinds or {})  # DeviceKind objects: user kinds are not registered in this process
        self.liveness = liveness or Liveness()
        self._handles: dict[str, object] = {}
        self._kind_of: dict[str, str] = {}
        self._free: dict[str, deque] = {}
        self._waiters: dict[str, deque] = {}
        self._leases: dict[str, Lease] = {}  # worker id -> its job
        self._recovering: set[str] = set()
        self._probing: set[str] = set()
        self._outcomes: dict[str, Outcome] = {}  # job id -> its end, until acknowledged
        self._cancelled: set[str] = set()
        self._failures: dict[str, str] = {}
        self._attempts: dict[str, int] = {}
        self.counters = PoolCounters()
        # one entry per kill: worker, job, trial, reason, and seconds past the job's limit
        self.kill_log: list[dict] = []
        self.submit_waits: list[float] = []
        # seconds a worker sat free while a trial was already waiting for it (dispatch latency)
        self.idle_gaps: list[float] = []
        self._freed_at: dict[str, float] = {}
        self._watchdog = None
        remote_worker = ray.remote(DeviceWorker)
        placed = {}
        if placement_group is not None:  # every worker in the group's first bundle (one device)
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            placed = {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=0)}
        for kind_name, count in workers_per_kind.items():
            kind = kinds.get(kind_name) or get_kind(kind_name)
            self._free[kind_name], self._waiters[kind_name] = deque(), deque()
            for i in range(count):
                wid = f"{kind_name}-{i}"
                handle = remote_worker.options(
                    name=f"sweeper-worker-{wid}", namespace=namespace, max_concurrency=16,
                    max_restarts=-1, **kind.actor_options(), **placed,
                ).remote(wid, kind, POOL_ACTOR_NAME, namespace, self.liveness, needs_provider, job_log_dir)
                self._handles[wid] = handle
                self._kind_of[wid] = kind_name
                self._free[kind_name].append(wid)

    async def ready(self) -> list[dict]:
        """Waits until every worker has started and starts the watchdog; returns the workers'
        info dicts (a worker that cannot serve its kind on its node says why in "start_error")."""
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return list(await asyncio.gather(*[h.info.remote() for h in self._handles.values()]))

    def worker_names(self) -> list[str]:
        """Returns the Ray actor names of the workers (for tearing a failed pool down)."""
        return [f"sweeper-worker-{wid}" for wid in self._handles]

    # ---- leasing ---------------------------------------------------------------------
    async def acquire(self, kind: str, spec, wait_s: float, timeout_s: float):
        """Starts `spec` on the next free worker of `kind`, with a time limit of `timeout_s`
        seconds; returns (worker handle, worker id, job id, seconds queued for a free
        worker), or None when no worker could take it within `wait_s` seconds."""
        t0 = time.monotonic()
        deadline = t0 + wait_s
        while True:
            wid = await self._take(kind, deadline - time.monotonic())
            if wid is None:
                return None
            got = time.monotonic()
            if spec.trial_id and spec.trial_id in self._cancelled:
                self._give_back(wid)
                raise RuntimeError(f"trial {spec.trial_id} was cancelled before it started")
            try:
                job_id, pid = await asyncio.wait_for(self._handles[wid].start_job.remote(spec),
                                                     self.liveness.call_timeout_s)
            except Exception as exc:  # noqa: BLE001 - dead, restarting, or refused: recover it, try another
                self.counters.start_failures += 1
                print(f"[sweeper] pool: could not start a job on {wid}: {type(exc).__name__}: {exc}", flush=True)
                self._recover(wid)
                continue
            now = time.monotonic()
            self._leases[wid] = Lease(wid, job_id, spec.trial_id, pid, timeout_s, now + timeout_s)
            self.submit_waits.append(now - t0)
            freed = self._freed_at.pop(wid, None)
            if freed is not None and t0 < freed:  # a trial was waiting when the worker freed up
                self.idle_gaps.append(now - freed)
            if spec.trial_id:
                self._attempts[spec.trial_id] = self._attempts.get(spec.trial_id, 0) + 1
            return self._handles[wid], wid, job_id, got - t0

    async def _take(self, kind: str, wait_s: float) -> str | None:
        """Returns a free worker of `kind`, waiting up to `wait_s` seconds in line, or None."""
        if self._free[kind] and not self._waiters[kind]:
            return self._free[kind].popleft()
        if wait_s <= 0:
            return None
        fut = asyncio.get_running_loop().create_future()
        self._waiters[kind].append(fut)
        # asyncio.wait never cancels the future, so a worker handed over as the wait ends
        # is taken here, never dropped
        await asyncio.wait({fut}, timeout=wait_s)
        if fut.done():
            return fut.result()
        self._waiters[kind].remove(fut)
        fut.cancel()
        return None

    def _give_back(self, wid: str) -> None:
        """Frees worker `wid`: to the first trial waiting for its kind, else to the free list."""
        self._leases.pop(wid, None)
        self._freed_at[wid] = time.monotonic()
        waiters = self._waiters[self._kind_of[wid]]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(wid)
                return
        if wid not in self._free[self._kind_of[wid]]:
            self._free[self._kind_of[wid]].append(wid)

    def _lease_of(self, job_id: str) -> Lease | None:
        return next((lease for lease in self._leases.values() if lease.job_id == job_id), None)

    # ---- a job's end -----------------------------------------------------------------
    async def job_ended(self, worker_id: str, job_id: str, base: int, events: list, state: str) -> bool:
        """Called by a worker as its job ends: keeps the events from index `base` on and the
        final state for the trial; returns True. A cancelled job's worker is free at once
        (its trial is gone); any other waits for the trial's `ack`."""
        if job_id not in self._outcomes:
            self._outcomes[job_id] = Outcome(state, base, list(events))
        lease = self._leases.get(worker_id)
        if lease is not None and lease.job_id == job_id:
            lease.ended_at = time.monotonic()
            if lease.cancelled_at is not None:
                self._outcomes.pop(job_id, None)
                self._give_back(worker_id)
        return True

    async def ack(self, job_id: str) -> bool:
        """Called by a trial holding job `job_id`'s final events: frees its worker and forgets
        the kept end. Returns whether the job still held a worker."""
        self._outcomes.pop(job_id, None)
        lease = self._lease_of(job_id)
        if lease is None:
            return False
        self._give_back(lease.worker_id)
        return True

    def outcome(self, job_id: str, cursor: int) -> tuple[list, str, str] | None:
        """Returns (events from index `cursor` on, final state, reason) of a job whose end the
        pool knows, or None while the pool still books it as running."""
        out = self._outcomes.get(job_id)
        if out is None:
            return None
        return out.events[max(0, cursor - out.base):], out.state, out.reason

    def _end_lease(self, lease: Lease, state: str, reason: str) -> None:
        """Ends a lease whose worker process died or is being killed: its trial gets `reason`."""
        self._outcomes.setdefault(lease.job_id, Outcome(state, reason=reason))
        self._leases.pop(lease.worker_id, None)

    async def job_lost(self, job_id: str, reason: str) -> bool:
        """Called by a trial whose worker died under job `job_id` with no end kept here: ends
        the job's lease with `reason` and recovers the worker (free once it answers again).
        Returns whether the pool still booked the job as running."""
        lease = self._lease_of(job_id)
        if lease is None or lease.ended_at is not None:
            return False
        self.counters.lost_jobs += 1
        self._end_lease(lease, "LOST", reason)
        self._recover(lease.worker_id)
        return True

    async def worker_restarted(self, worker_id: str, pid: int) -> None:
        """Called by a worker that Ray restarted (now process `pid`): a job it was booked for
        in an earlier process is lost, and the worker is free again."""
        lease = self._leases.get(worker_id)
        if lease is not None and lease.pid != pid:
            if lease.ended_at is None:
                self.counters.lost_jobs += 1
            self._end_lease(lease, "LOST", f"worker {worker_id}'s process died under job {lease.job_id}")
            self._recover(worker_id)

    # ---- cancelling ------------------------------------------------------------------
    async def cancel_trial(self, trial_id: str) -> bool:
        """Cancels trial `trial_id`'s job (now, or before it starts); returns whether a
        running job was told to stop."""
        self._cancelled.add(trial_id)
        lease = next((x for x in self._leases.values() if x.trial_id == trial_id), None)
        return await self._cancel(lease) if lease else False

    async def cancel_job(self, job_id: str) -> bool:
        """Cancels job `job_id` (its trial left without reading its end); returns whether a
        running job was told to stop."""
        lease = self._lease_of(job_id)
        return await self._cancel(lease) if lease else False

    async def _cancel(self, lease: Lease) -> bool:
        if lease.cancelled_at is None:
            lease.cancelled_at = time.monotonic()
        if lease.ended_at is not None:  # ended, and its trial will not acknowledge it now
            self._outcomes.pop(lease.job_id, None)
            self._give_back(lease.worker_id)
            return False
        try:  # if this fails or hangs, the watchdog kills the worker after the grace period
            return await asyncio.wait_for(self._handles[lease.worker_id].cancel.remote(lease.job_id),
                                          self.liveness.call_timeout_s)
        except Exception:  # noqa: BLE001
            return False

    # ---- supervision -----------------------------------------------------------------
    async def _watch(self) -> None:
        """Every tick: kills the workers of overrunning, silent or unstoppable jobs, takes
        back workers whose trial never acknowledged an ended job, and probes the rest."""
        while True:
            await asyncio.sleep(self.liveness.tick_s)
            try:
                self._check_leases(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the watchdog must outlive any one bug
                print(f"[sweeper] pool watchdog: {type(exc).__name__}: {exc}", flush=True)

    def _check_leases(self, now: float) -> None:
        live = self.liveness
        for wid, lease in list(self._leases.items()):
            if lease.ended_at is not None:
                if now - lease.ended_at > live.ack_timeout_s:
                    self.counters.reclaimed += 1
                    self._give_back(wid)
            elif now > lease.deadline:
                self.counters.timeouts += 1
                self._kill(lease, "TIMEOUT", f"job {lease.job_id} on {wid} timed out after {lease.timeout_s:g} s")
            elif lease.cancelled_at is not None and now - lease.cancelled_at > live.cancel_grace_s:
                self._kill(lease, "LOST", f"job {lease.job_id} on {wid} did not stop within "
                                          f"{live.cancel_grace_s:g} s of being cancelled")
            elif wid not in self._probing:
                self._probing.add(wid)
                asyncio.get_running_loop().create_task(self._probe(lease))

    async def _probe(self, lease: Lease) -> None:
        """Asks the worker of `lease` how its job is: kills it if it does not answer within a
        call timeout (long enough for a restart, whose calls Ray queues), ends the lease if the job is unknown there (the process died), marks it
        ended if the worker's hand-over was lost, cancels it if its trial stopped polling."""
        wid, live = lease.worker_id, self.liveness
        try:
            st = await asyncio.wait_for(self._handles[wid].status.remote(), live.call_timeout_s)
        except asyncio.TimeoutError:
            if self._leases.get(wid) is lease and lease.ended_at is None:
                self._kill(lease, "LOST", f"worker {wid} stopped answering for {live.call_timeout_s:g} s "
                                          f"during job {lease.job_id}")
            return
        except Exception:  # noqa: BLE001 - dead or restarting: worker_restarted or the next probe tells
            return
        finally:
            self._probing.discard(wid)
        if self._leases.get(wid) is not lease:
            return
        job = st["jobs"].get(lease.job_id)
        if st["pid"] != lease.pid or job is None:
            self.counters.lost_jobs += 1
            self._end_lease(lease, "LOST", f"worker {wid}'s process died under job {lease.job_id}")
            self._recover(wid)
        elif job["state"] != "RUNNING" and lease.ended_at is None:
            lease.ended_at = time.monotonic()  # its hand-over never came; the trial reads the worker
        elif job["since_poll_s"] > live.heartbeat_timeout_s and lease.cancelled_at is None:
            print(f"[sweeper] pool: job {lease.job_id} on {wid} (trial {lease.trial_id or '-'}) not polled for "
                  f"{live.heartbeat_timeout_s:g} s; cancelling it", flush=True)
            await self._cancel(lease)

    def _kill(self, lease: Lease, state: str, reason: str) -> None:
        """Kills the worker process of `lease` (Ray starts a fresh one), telling its trial why."""
        import ray

        print(f"[sweeper] pool: {reason}; killing the worker process", flush=True)
        self.counters.kills += 1
        self.kill_log.append({"worker_id": lease.worker_id, "job_id": lease.job_id, "trial_id": lease.trial_id,
                              "reason": reason, "overrun_s": round(time.monotonic() - lease.deadline, 3)})
        self._end_lease(lease, state, reason)
        try:
            ray.kill(self._handles[lease.worker_id], no_restart=False)
        except Exception as exc:  # noqa: BLE001 - recovery retries the kill
            print(f"[sweeper] pool: could not kill {lease.worker_id}: {type(exc).__name__}: {exc}", flush=True)
        self._recover(lease.worker_id)

    def _recover(self, wid: str) -> None:
        """Hands worker `wid` to recovery, which frees it once it answers with no job running."""
        self._leases.pop(wid, None)
        if wid not in self._recovering:
            self._recovering.add(wid)
            asyncio.get_running_loop().create_task(self._recover_worker(wid))

    async def _recover_worker(self, wid: str) -> None:
        """Frees worker `wid` once it answers with no job running. A restarting worker is
        waited for; one that answers nothing for a call timeout is killed (Ray starts it
        afresh); a job running there that no trial holds (its start's reply was lost) is
        cancelled, and killed with its worker if it has not stopped after the grace period."""
        import ray

        handle, live, stubborn_since = self._handles[wid], self.liveness, None
        while True:
            try:
                st = await asyncio.wait_for(handle.status.remote(), live.call_timeout_s)
            except asyncio.TimeoutError:
                ray.kill(handle, no_restart=False)
                continue
            except Exception:  # noqa: BLE001 - restarting: Ray refuses calls until it is up
                await asyncio.sleep(0.5)
                continue
            running = [j for j, s in st["jobs"].items() if s["state"] == "RUNNING"]
            if not running:
                break
            now = time.monotonic()
            stubborn_since = stubborn_since or now
            if now - stubborn_since > live.cancel_grace_s:
                ray.kill(handle, no_restart=False)
                stubborn_since = None
            else:
                for job_id in running:
                    try:
                        await asyncio.wait_for(handle.cancel.remote(job_id), live.call_timeout_s)
                    except Exception:  # noqa: BLE001 - the next round asks again
                        pass
            await asyncio.sleep(live.tick_s)
        self._recovering.discard(wid)
        self._give_back(wid)

    # ---- reporting -------------------------------------------------------------------
    def stranded(self) -> list[str]:
        """Returns the workers held for no live job: leased for a job that has ended and
        waited longer than the acknowledgement timeout, or in no state at all."""
        now, out = time.monotonic(), []
        for wid in self._handles:
            lease = self._leases.get(wid)
            if lease is not None:
                if lease.ended_at is not None and now - lease.ended_at > self.liveness.ack_timeout_s:
                    out.append(wid)
            elif wid not in self._recovering and wid not in self._free[self._kind_of[wid]]:
                out.append(wid)
        return out

    async def reclaim(self) -> int:
        """Frees every stranded worker now; returns how many."""
        wids = self.stranded()
        for wid in wids:
            self.counters.reclaimed += 1
            self._give_back(wid)
        return len(wids)

    async def drain(self, timeout_s: float) -> dict:
        """Waits up to `timeout_s` seconds until no worker is leased or recovering (the end
        of a sweep); returns `health()`."""
        deadline = time.monotonic() + timeout_s
        while (self._leases or self._recovering) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.health()

    def health(self) -> dict:
        """Returns {"workers", "free", "leased", "recovering", "stranded" (count), "kills",
        "timeouts", "lost_jobs", "reclaimed", "start_failures" (counts), "kill_log" (one
        dict per kill, with "overrun_s": seconds past the job's limit, negative before it)}."""
        from dataclasses import asdict

        return {"workers": len(self._handles), "free": sum(len(q) for q in self._free.values()),
                "leased": len(self._leases), "recovering": len(self._recovering),
                "stranded": len(self.stranded()), **asdict(self.counters), "kill_log": list(self.kill_log)}

    async def stats(self) -> dict:
        """Returns {worker_id: info dict with counters} for every worker (an "error" entry
        for one that did not answer within a call timeout)."""
        async def one(h):
            return await asyncio.wait_for(h.info.remote(), self.liveness.call_timeout_s)

        infos = await asyncio.gather(*[one(h) for h in self._handles.values()], return_exceptions=True)
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
        return {k: len(q) for k, q in self._free.items()}

    def idle_gap_times(self) -> list[float]:
        """Returns the seconds between a worker's job ending and its next job starting, for
        every job that was already queued when the worker freed up."""
        return list(self.idle_gaps)

    def submit_wait_times(self) -> list[float]:
        """Returns the seconds each acquire waited for a free worker and a started job."""
        return list(self.submit_waits)


def start_pool(workers_per_kind: dict[str, int], namespace: str, liveness: Liveness | None = None,
               kinds: dict | None = None, needs_provider: bool = False, job_log_dir: str | None = None,
               placement_group=None):
    """Starts the named pool actor and its workers (`kinds`: name -> DeviceKind for kinds not
    built in; `needs_provider`: workers refuse to start without their kind's onnxruntime
    execution provider; `job_log_dir`: each worker appends its jobs' starts and ends to
    <worker id>.jsonl there, on its node; `placement_group`: every worker goes into its first
    bundle); returns the pool handle once all workers are up, or raises DeviceUnavailable
    with the first worker's one-line reason."""
    import ray

    liveness = liveness or Liveness()
    pool = ray.remote(DevicePool).options(name=POOL_ACTOR_NAME, namespace=namespace, num_cpus=0,
                                          max_concurrency=1000).remote(workers_per_kind, namespace, liveness, kinds,
                                                                        needs_provider, job_log_dir, placement_group)
    # a worker's first start imports torch and may build its kind's runtime: a few call timeouts
    infos = ray.get(pool.ready.remote(), timeout=5 * liveness.call_timeout_s)
    failed = [i["start_error"] for i in infos if i.get("start_error")]
    if failed:
        from ..errors import DeviceUnavailable

        stop_pool(pool, namespace, liveness)
        raise DeviceUnavailable(failed[0])
    return pool


def stop_pool(pool, namespace: str, liveness: Liveness | None = None) -> None:
    """Kills the pool actor and its workers (no restarts): for a pool that ends before the
    Ray session does (a failed start, workers_per_device="auto"'s trial pools)."""
    import ray

    liveness = liveness or Liveness()
    for name in ray.get(pool.worker_names.remote(), timeout=liveness.call_timeout_s):
        try:
            ray.kill(ray.get_actor(name, namespace=namespace))
        except ValueError:  # already gone
            pass
    ray.kill(pool)
