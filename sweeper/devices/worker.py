"""The device worker: one long-lived Ray actor per device (a CPU slot, GPU i).

It owns the device, keeps what is expensive to rebuild (loaded base models, tokenized
data, calibration batches) in a cache keyed by content across jobs, and runs one job at
a time in a thread so that polls, cancels and counters stay answerable while it works.
A job whose trial stops polling for `heartbeat_timeout_s` (driver or trial gone) is
cancelled, so the device never stays busy for nobody.
"""
from __future__ import annotations

import tempfile
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field

from ..errors import JobCancelled
from .jobspec import JobSpec


@dataclass
class _Job:
    job_id: str
    spec: JobSpec
    events: list = field(default_factory=list)
    state: str = "RUNNING"  # RUNNING | DONE | ERROR | CANCELLED
    cancel: threading.Event = field(default_factory=threading.Event)
    last_poll: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)


class DeviceWorker:
    """A Ray actor class (wrapped with ray.remote by the pool) that runs jobs on one device."""

    def __init__(self, worker_id: str, kind, pool_name: str | None = None, namespace: str | None = None,
                 heartbeat_timeout_s: float = 30.0, needs_provider: bool = False):
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
        # Exported and quantized graphs live here; the folder goes with the worker process.
        self._scratch = tempfile.TemporaryDirectory(prefix=f"sweeper-{worker_id}-")
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._cache: dict = {}
        self._cache_lock = threading.Lock()
        self.counters = {"model_loads": 0, "model_cache_hits": 0, "onnx_exports": 0, "onnx_cache_hits": 0,
                         "tf_exports": 0, "tf_cache_hits": 0,
                         "data_builds": 0, "data_cache_hits": 0,
                         "jobs_started": 0, "jobs_done": 0, "jobs_failed": 0, "jobs_cancelled": 0,
                         "busy_s": 0.0}
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._pool_name, self._namespace = pool_name, namespace
        threading.Thread(target=self._watchdog, daemon=True, name="sweeper-watchdog").start()
        import ray

        with warnings.catch_warnings():  # Ray's own property trips its own deprecation warning
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if pool_name and restarted:
            # Ray restarted this worker after it died, maybe mid-job: the pool still books it busy.
            threading.Thread(target=self._tell_pool, args=("worker_restarted",), daemon=True).start()

    # ---- called remotely -------------------------------------------------------------
    def info(self) -> dict:
        """Returns this worker's id, kind, node, device and counters."""
        import ray

        return {"worker_id": self.worker_id, "kind": self.kind_name, "device": self._device_name(),
                "node_id": ray.get_runtime_context().get_node_id(), "counters": dict(self.counters),
                "start_error": self._start_error}

    def start_job(self, spec: JobSpec) -> str:
        """Starts `spec` in a thread and returns its job id. Refuses if a job is running."""
        if self._start_error:
            raise RuntimeError(self._start_error)
        with self._lock:
            busy = [j.job_id for j in self._jobs.values() if j.state == "RUNNING"]
            if busy:
                raise RuntimeError(f"worker {self.worker_id} is busy with job {busy[0]}")
            job = _Job(uuid.uuid4().hex[:12], spec)
            self._jobs[job.job_id] = job
            self._forget_old_jobs()
            self.counters["jobs_started"] += 1
        threading.Thread(target=self._run, args=(job,), daemon=True, name=f"job-{job.job_id}").start()
        return job.job_id

    def poll(self, job_id: str, cursor: int, timeout_s: float = 1.0) -> tuple[list, str]:
        """Returns (events after `cursor`, job state), waiting up to timeout_s seconds for news.
        Each poll is also the trial's heartbeat."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            job = self._jobs[job_id]
            job.last_poll = time.monotonic()
            while len(job.events) <= cursor and job.state == "RUNNING":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            job.last_poll = time.monotonic()
            return list(job.events[cursor:]), job.state

    def cancel(self, job_id: str) -> bool:
        """Asks the job to stop at its next check; returns whether it was still running."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != "RUNNING":
                return False
            job.cancel.set()
            return True

    def cancel_trial(self, trial_id: str) -> bool:
        """Cancels the running job of Tune trial `trial_id`, if any; returns whether one was."""
        with self._lock:
            ids = [j.job_id for j in self._jobs.values() if j.spec.trial_id == trial_id and j.state == "RUNNING"]
        return any([self.cancel(i) for i in ids])

    def counters_snapshot(self) -> dict:
        """Returns a copy of the counters (cache hits/misses, jobs, busy seconds)."""
        return dict(self.counters)

    # ---- the job ---------------------------------------------------------------------
    def _device_name(self) -> str:
        import torch

        if self.torch_device == "cuda" and torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        return self.torch_device or "none"

    def cached(self, key, build):
        """Returns the worker-cached value for `key`, calling build() once on a miss."""
        kind = key[0] if isinstance(key, tuple) and key and key[0] in ("model", "onnx", "tf") else "data"
        with self._cache_lock:
            if key in self._cache:
                self.counters[f"{kind}_cache_hits"] += 1
                return self._cache[key]
        value = build()
        with self._cache_lock:
            self._cache.setdefault(key, value)
            self.counters[{"model": "model_loads", "onnx": "onnx_exports", "tf": "tf_exports", "data": "data_builds"}[kind]] += 1
            return self._cache[key]

    def _emit(self, job: _Job, event: dict, state: str | None = None):
        with self._lock:
            job.events.append(event)
            if state:
                job.state = state
            self._lock.notify_all()

    def _run(self, job: _Job):
        # Counters are updated before the final event: whoever reads them after the trial
        # ends must see this job counted.
        t0 = time.monotonic()
        try:
            result = run_job(job.spec, self, job)
            final, state, counter = {"type": "done", **result}, "DONE", "jobs_done"
        except JobCancelled:
            final, state, counter = {"type": "cancelled"}, "CANCELLED", "jobs_cancelled"
        except BaseException as exc:  # the trial gets the reason; the worker lives on
            reason = f"{type(exc).__name__}: {exc}"
            final, state, counter = {"type": "error", "error": reason, "traceback": traceback.format_exc()}, "ERROR", "jobs_failed"
        self.counters[counter] += 1
        self.counters["busy_s"] += time.monotonic() - t0
        self._emit(job, final, state)
        self._release()

    def _release(self):
        if self._pool_name:
            self._tell_pool("release")

    def _tell_pool(self, method: str):
        import ray

        for _ in range(50):
            try:
                getattr(ray.get_actor(self._pool_name, namespace=self._namespace), method).remote(self.worker_id)
                return
            except ValueError:  # pool not registered yet, or gone with the driver
                time.sleep(0.2)

    def _watchdog(self):
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                stale = [j for j in self._jobs.values()
                         if j.state == "RUNNING" and now - j.last_poll > self._heartbeat_timeout_s]
            for j in stale:
                print(f"[sweeper] worker {self.worker_id}: job {j.job_id} (trial {j.spec.trial_id or '-'}) "
                      f"not polled for {self._heartbeat_timeout_s:.0f}s; cancelling it", flush=True)
                j.cancel.set()

    def _forget_old_jobs(self, keep: int = 32):
        done = [k for k, j in self._jobs.items() if j.state != "RUNNING"]
        for k in done[:-keep] if len(done) > keep else []:
            del self._jobs[k]


def run_job(spec: JobSpec, worker: DeviceWorker, job: _Job) -> dict:
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
        print(f"[{worker.worker_id} {spec.trial_id or 'baseline'}] {msg}", flush=True)

    loaded = worker.cached(("model", spec.model, str(device)),
                           lambda: load_model(spec.model, device=str(device), trust_remote_code=spec.trust_remote_code, log=log))
    model = loaded.model
    if spec.model_format == "onnx":
        model = worker.cached(("onnx", loaded.content_key, spec.onnx_opset),
                              lambda: _export(worker, loaded, spec.onnx_opset, log))
    elif spec.model_format == "tf":
        from pathlib import Path

        from ..models.tf_export import export_loaded

        model = worker.cached(("tf", loaded.content_key),
                              lambda: export_loaded(loaded, Path(worker._scratch.name) / f"saved-{loaded.content_key[:16]}", log))
    task_entry = TASKS.get(spec.task)
    task_cfg = task_entry.config_cls(**spec.task_kwargs)
    final: dict = {}

    def report(metrics: dict, artifacts: dict | None = None):
        final.clear()
        final.update(metrics)
        worker._emit(job, {"type": "metrics", "metrics": metrics, "artifacts": artifacts or {}})

    with tempfile.TemporaryDirectory(prefix=f"job-{job.job_id}-", dir=worker._scratch.name) as workdir:
        ctx = JobContext(device=device, tokenizer=loaded.tokenizer, seed=spec.seed, report=report,
                         check_cancelled=check_cancelled, cached=worker.cached, log=log, kind=worker.kind,
                         workdir=workdir)
        ctx.evaluate = lambda m: task_entry.fn(m, task_cfg, ctx)
        check_cancelled()
        if spec.recipe is None:
            report(ctx.evaluate(model))
            return {"metrics": final, "info": {"model_key": loaded.content_key}}
        ctx.train_text = worker.cached(("training-text",), load_training_text)
        recipe_entry = RECIPES.get(spec.recipe)
        torch.manual_seed(spec.seed)
        # Recipes never modify the model they are given (the worker's cached base model or graph).
        q = recipe_entry.fn(model, recipe_entry.config_cls(**spec.recipe_kwargs), ctx)
        if not q.reported:
            report({**ctx.evaluate(q.model), **q.metrics}, q.artifacts)
        return {"metrics": final, "info": {"model_key": loaded.content_key, **q.info}}


def _export(worker: DeviceWorker, loaded, opset: int, log):
    """Returns the worker's ONNX export of `loaded` (into its scratch folder), checked
    against the torch model."""
    from pathlib import Path

    from ..models.onnx_export import export_causal_lm

    out = Path(worker._scratch.name) / f"export-{loaded.content_key[:16]}-opset{opset}"
    return export_causal_lm(loaded.model, out, opset=opset, source_key=loaded.content_key, log=log)
