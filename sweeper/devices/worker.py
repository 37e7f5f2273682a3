"""The device worker: one long-lived Ray actor per device (a CPU slot, GPU i).

It owns the device, keeps what is expensive to rebuild (loaded base models, tokenized
data, calibration batches) in a cache keyed by content across jobs, and runs one job at
a time in a thread so that polls, probes, cancels and counters stay answerable while it
works. It supervises nothing itself: the pool probes it and kills its process when a job
overruns, stops answering or ignores a cancel, and Ray starts a fresh one.

A job's end is handed to the pool (`job_ended`) before the job is marked ended here, so
a finished result survives this process dying before its trial has read it. The worker
never frees itself: the pool does, once the trial acknowledges the final events.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JobCancelled
from ..record import package_versions
from ..reports.console import log_file, redirect_output_to, send_warnings_to
from .jobspec import JobSpec
from .oom import BatchBackoff, cap_gpu_memory, free_device_memory, is_out_of_memory
from .liveness import Liveness

ENDED = ("DONE", "ERROR", "CANCELLED")


@dataclass
class CacheCounter:
    """One family of the worker's cache: values built, and lookups served from the cache."""

    builds: int = 0
    hits: int = 0


@dataclass
class WorkerCounters:
    """What a worker has done since its process started (counts; busy_s in seconds)."""

    model: CacheCounter = field(default_factory=CacheCounter)
    onnx: CacheCounter = field(default_factory=CacheCounter)
    tf: CacheCounter = field(default_factory=CacheCounter)
    data: CacheCounter = field(default_factory=CacheCounter)
    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    busy_s: float = 0.0

    def family(self, key) -> CacheCounter:
        """Returns the counter of the cache family of `key`: a tuple starting "model", "onnx"
        or "tf" counts there, anything else is data."""
        head = key[0] if isinstance(key, tuple) and key else None
        return {"model": self.model, "onnx": self.onnx, "tf": self.tf}.get(head, self.data)

    def count_end(self, state: str, seconds: float) -> None:
        """Counts a job that ended in `state` after `seconds` of work."""
        if state == "DONE":
            self.jobs_done += 1
        elif state == "CANCELLED":
            self.jobs_cancelled += 1
        else:
            self.jobs_failed += 1
        self.busy_s += seconds

    def as_dict(self) -> dict:
        """Returns the counters flat, as the summary reports them (model_loads, model_cache_hits,
        onnx_exports, onnx_cache_hits, tf_exports, tf_cache_hits, data_builds, data_cache_hits,
        jobs_*, busy_s)."""
        return {"model_loads": self.model.builds, "model_cache_hits": self.model.hits,
                "onnx_exports": self.onnx.builds, "onnx_cache_hits": self.onnx.hits,
                "tf_exports": self.tf.builds, "tf_cache_hits": self.tf.hits,
                "data_builds": self.data.builds, "data_cache_hits": self.data.hits,
                "jobs_started": self.jobs_started, "jobs_done": self.jobs_done, "jobs_failed": self.jobs_failed,
                "jobs_cancelled": self.jobs_cancelled, "busy_s": self.busy_s}


@dataclass
class Job:
    """One job on a worker: its events so far, its state, and its trial's last poll."""

    job_id: str
    spec: JobSpec
    events: list = field(default_factory=list)
    state: str = "RUNNING"  # RUNNING | DONE | ERROR | CANCELLED
    cancel: threading.Event = field(default_factory=threading.Event)
    last_poll: float = field(default_factory=time.monotonic)
    seen: int = 0  # events the trial already has: the highest cursor it polled with
    started: float = field(default_factory=time.time)


class DeviceWorker:
    """A Ray actor class (wrapped with ray.remote by the pool) that runs jobs on one device."""

    def __init__(self, worker_id: str, kind, pool_name: str | None = None, namespace: str | None = None,
                 liveness: Liveness | None = None, needs_provider: bool = False, job_log_dir: str | None = None):
        import torch

        self._start_error = None
        if needs_provider:  # an ONNX sweep: fail at start, on this node, not mid-trial
            from .ort_session import ProviderUnavailable, check_provider

            try:
                check_provider(kind)
            except ProviderUnavailable as exc:  # reported by info(); the pool refuses to start
                self._start_error = str(exc)
        if getattr(kind, "frameworks", ()):  # a TF sweep: TensorFlow must import on this node
            from .tf_workers import start_error

            self._start_error = self._start_error or start_error(kind)
        self.worker_id, self.kind, self.kind_name = worker_id, kind, kind.name
        self.torch_device = kind.torch_device
        torch.set_num_threads(max(1, kind.threads))
        cap_gpu_memory(kind)  # several workers per GPU: each stays within its share
        # Exported and quantized graphs live here; the folder goes with the worker process.
        self.scratch = tempfile.TemporaryDirectory(prefix=f"sweeper-{worker_id}-")
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._cache: dict = {}
        self._cache_lock = threading.Lock()
        self.counters = WorkerCounters()
        self._liveness = liveness or Liveness()
        self._pool_name, self._namespace = pool_name, namespace
        self._job_log = Path(job_log_dir) / f"{worker_id}.jsonl" if job_log_dir else None
        # read once: info() answers the pool's frequent probes, and a process's packages do not change
        self.versions = package_versions()
        # a quiet sweep: everything this worker prints, and its warnings, go to its log file
        log_path = log_file(f"{worker_id}.log")
        if log_path is not None:
            send_warnings_to(log_path)
            redirect_output_to(log_path)
        import ray

        with warnings.catch_warnings():  # Ray's own property trips its own deprecation warning
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if pool_name and restarted:
            # Ray restarted this worker after it died, maybe mid-job: the pool may still book
            # that job as running here. (Its probe finds out too; this only makes it sooner.)
            threading.Thread(target=self._tell_pool, args=("worker_restarted", os.getpid()), daemon=True).start()

    # ---- called remotely -------------------------------------------------------------
    def info(self) -> dict:
        """Returns this worker's id, kind, node, device, process id, package versions and counters."""
        import ray

        return {"worker_id": self.worker_id, "kind": self.kind_name, "device": self._device_name(),
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "versions": self.versions,
                "counters": self.counters.as_dict(), "start_error": self._start_error}

    def start_job(self, spec: JobSpec) -> tuple[str, int]:
        """Starts `spec` in a thread; returns (job id, this process's pid). Refuses if a job
        is running."""
        if self._start_error:
            raise RuntimeError(self._start_error)
        with self._lock:
            busy = [j.job_id for j in self._jobs.values() if j.state == "RUNNING"]
            if busy:
                raise RuntimeError(f"worker {self.worker_id} is busy with job {busy[0]}")
            job = Job(uuid.uuid4().hex[:12], spec)
            self._jobs[job.job_id] = job
            self._forget_old_jobs()
            self.counters.jobs_started += 1
        self._log_job(job, "START")
        threading.Thread(target=self._run, args=(job,), daemon=True, name=f"job-{job.job_id}").start()
        return job.job_id, os.getpid()

    def poll(self, job_id: str, cursor: int, timeout_s: float = 1.0) -> tuple[list, str]:
        """Returns (events after `cursor`, job state), waiting up to timeout_s seconds for news.
        Each poll is the trial's heartbeat. State "UNKNOWN": this process never ran the job
        (it was restarted since)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return [], "UNKNOWN"
            job.last_poll = time.monotonic()
            job.seen = max(job.seen, cursor)
            while len(job.events) <= cursor and job.state == "RUNNING":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            job.last_poll = time.monotonic()
            return list(job.events[cursor:]), job.state

    def status(self) -> dict:
        """Returns what the pool's probe needs: {"pid", "jobs": {job id: {"state",
        "since_poll_s" (seconds since its trial last polled)}}} over the jobs this process knows."""
        now = time.monotonic()
        with self._lock:
            jobs = {j.job_id: {"state": j.state, "since_poll_s": now - j.last_poll} for j in self._jobs.values()}
        return {"pid": os.getpid(), "jobs": jobs}

    def cancel(self, job_id: str) -> bool:
        """Asks the job to stop at its next check; returns whether it was still running."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != "RUNNING":
                return False
            job.cancel.set()
            return True

    def counters_snapshot(self) -> dict:
        """Returns the counters as `WorkerCounters.as_dict` gives them."""
        return self.counters.as_dict()

    # ---- the job ---------------------------------------------------------------------
    def _device_name(self) -> str:
        import torch

        if self.torch_device == "cuda" and torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        return self.torch_device or "none"

    def cached(self, key, build):
        """Returns the worker-cached value for `key`, calling build() once on a miss."""
        counter = self.counters.family(key)
        with self._cache_lock:
            if key in self._cache:
                counter.hits += 1
                return self._cache[key]
        value = build()
        with self._cache_lock:
            self._cache.setdefault(key, value)
            counter.builds += 1
            return self._cache[key]

    def emit(self, job: Job, event: dict) -> None:
        """Appends a running job's event (a dict with "type") for its trial's next poll."""
        with self._lock:
            job.events.append(event)
            self._lock.notify_all()

    def _run(self, job: Job):
        t0 = time.monotonic()
        try:
            result = run_job(job.spec, self, job)
            final, state = {"type": "done", **result}, "DONE"
        except JobCancelled:
            final, state = {"type": "cancelled"}, "CANCELLED"
        except BaseException as exc:  # the trial gets the reason; the worker lives on
            reason = f"{type(exc).__name__}: {exc}"
            final, state = {"type": "error", "error": reason, "traceback": traceback.format_exc()}, "ERROR"
        with self._lock:
            seen = job.seen
            tail = job.events[seen:] + [final]
        # The pool keeps the end before anything here says the job ended: if this process
        # dies before the trial reads it, the trial gets it from the pool. So a job the log
        # or the counters call ended has its result safe.
        self._tell_pool("job_ended", job.job_id, seen, tail, state)
        self._log_job(job, state)
        # counted before the end is visible: whoever reads counters after the trial ends
        # must see this job counted
        self.counters.count_end(state, time.monotonic() - t0)
        with self._lock:
            job.events.append(final)
            job.state = state
            self._lock.notify_all()

    def _tell_pool(self, method: str, *args):
        """Calls the pool's `method`(worker id, *args) and waits for it, at most one call
        timeout; returns its result, or None where the pool could not be reached."""
        import ray

        if not self._pool_name:
            return None
        deadline = time.monotonic() + self._liveness.call_timeout_s
        while time.monotonic() < deadline:
            try:
                pool = ray.get_actor(self._pool_name, namespace=self._namespace)
                return ray.get(getattr(pool, method).remote(self.worker_id, *args),
                               timeout=max(0.1, deadline - time.monotonic()))
            except ValueError:  # pool not registered yet, or gone with the driver
                time.sleep(0.2)
            except Exception as exc:  # noqa: BLE001 - the pool's probe recovers what this misses
                print(f"[sweeper] worker {self.worker_id}: pool.{method} failed: {type(exc).__name__}: {exc}", flush=True)
                return None
        return None

    def _log_job(self, job: Job, event: str) -> None:
        """Appends one line to this worker's job log (when the sweep keeps one): what a
        reader needs to tell which trial's jobs started and ended here, and in which process."""
        if self._job_log is None:
            return
        self._job_log.parent.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "event": event, "job_id": job.job_id, "trial_id": job.spec.trial_id,
                "worker_id": self.worker_id, "pid": os.getpid()}
        with open(self._job_log, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _forget_old_jobs(self, keep: int = 32):
        done = [k for k, j in self._jobs.items() if j.state != "RUNNING"]
        for k in done[:-keep] if len(done) > keep else []:
            del self._jobs[k]


def run_job(spec: JobSpec, worker: DeviceWorker, job: Job) -> dict:
    """Runs one job on `worker`'s device; returns the final event's payload
    ({"metrics": {...}, "info": {...}}); metrics and artifacts travel in "metrics" events."""
    import torch

    from ..data import load_training_text
    from ..jobs import JobContext
    from ..models.loading import load_model
    from ..registry import RECIPES, TASKS, ensure_builtin_registered, import_plugin

    ensure_builtin_registered()
    for plugin in spec.plugins:
        import_plugin(plugin)
    device = torch.device(worker.torch_device or "cpu")

    def check_cancelled():
        if job.cancel.is_set():
            raise JobCancelled(f"job {job.job_id} cancelled")

    def log(msg: str):
        # to the driver's console through Ray, or in a quiet sweep to this worker's log file
        print(f"[{worker.worker_id} {spec.trial_id or 'baseline'}] {msg}", flush=True)

    loaded = worker.cached(("model", spec.model, str(device)),
                           lambda: load_model(spec.model, device=str(device), trust_remote_code=spec.trust_remote_code, log=log))
    model = loaded.model
    if spec.model_format == "onnx":
        model = worker.cached(("onnx", loaded.content_key, spec.onnx_opset),
                              lambda: _export(worker, loaded, spec.onnx_opset, log))
    elif spec.model_format == "tf":
        from ..models.tf_export import export_loaded

        model = worker.cached(("tf", loaded.content_key),
                              lambda: export_loaded(loaded, Path(worker.scratch.name) / f"saved-{loaded.content_key[:16]}", log))
    final: dict = {}

    train_text = worker.cached(("training-text",), load_training_text) if spec.recipe is not None else None
    recipe_entry = RECIPES.get(spec.recipe) if spec.recipe is not None else None
    batches = BatchBackoff(recipe_entry.config_cls if recipe_entry else None, spec.recipe_kwargs,
                           TASKS.get(spec.task).config_cls, spec.task_kwargs)

    def report(metrics: dict, artifacts: dict | None = None):
        metrics = {**metrics, **batches.record()}  # what this attempt ran with, after a back-off
        final.clear()
        final.update(metrics)
        worker.emit(job, {"type": "metrics", "metrics": metrics, "artifacts": artifacts or {}})

    def attempt() -> dict:
        with tempfile.TemporaryDirectory(prefix=f"job-{job.job_id}-", dir=worker.scratch.name) as workdir:
            task = batches.parts["eval_batch_size"][0](**batches.kwargs("eval_batch_size"))
            ctx = JobContext(device=device, tokenizer=loaded.tokenizer, seed=spec.seed, report=report,
                             check_cancelled=check_cancelled, cached=worker.cached, log=log, kind=worker.kind,
                             workdir=workdir, train_text=train_text, task=task)
            check_cancelled()
            if recipe_entry is None:
                report(ctx.evaluate(model))
                return {"metrics": final, "info": {"model_key": loaded.content_key}}
            torch.manual_seed(spec.seed)
            # Recipes never modify the model they are given (the worker's cached base model or graph).
            q = recipe_entry.fn(model, recipe_entry.config_cls(**batches.kwargs("batch_size")), ctx)
            if not q.reported:
                report({**ctx.evaluate(q.model), **q.metrics}, q.artifacts)
            return {"metrics": final, "info": {"model_key": loaded.content_key, **q.info}}

    if device.type == "cuda":  # this job's peak, for workers_per_device="auto" (sweeper/packing.py)
        torch.cuda.reset_peak_memory_stats(device)
    while True:
        try:
            out = attempt()
            if device.type == "cuda":
                out["info"].update(gpu_memory_of(device))
            return out
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried; the rest re-raised
            if not is_out_of_memory(exc):
                raise
            line = batches.back_off(exc, device)  # raises the job's reason when out of halvings
            del exc
            free_device_memory()
            log(line)


def gpu_memory_of(device) -> dict:
    """Returns this process's GPU memory on `device` in MiB: "gpu_peak_mb" (the most its
    allocator held since the job's start: cached blocks of earlier jobs included, so what the
    worker occupies), "gpu_used_mb" (the whole device in use now, every process and CUDA
    context included) and "gpu_total_mb"."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return {"gpu_peak_mb": torch.cuda.max_memory_reserved(device) / 2**20,
            "gpu_used_mb": (total - free) / 2**20, "gpu_total_mb": total / 2**20}


def _export(worker: DeviceWorker, loaded, opset: int, log):
    """Returns the ONNX export of `loaded`, checked against the torch model: from this
    machine's export cache when the weights have a content key (one export per node, not
    per worker), else into the worker's scratch folder."""
    from ..models.onnx_export import export_cached, export_causal_lm

    if loaded.content_key:
        return export_cached(loaded.model, loaded.content_key, opset=opset, log=log)
    out = Path(worker.scratch.name) / f"export-opset{opset}"
    return export_causal_lm(loaded.model, out, opset=opset, log=log)
