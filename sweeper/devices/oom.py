"""Out-of-memory back-off: a job whose device runs out of memory is run again on the same
worker with half the batch size (its recipe's training batch and its task's evaluation
batch), at most OOM_RETRIES times."""
from __future__ import annotations

import dataclasses
import gc

OOM_RETRIES = 2
BATCH_FIELD = "batch_size"


def is_out_of_memory(exc: BaseException) -> bool:
    """Returns whether `exc` is a device out-of-memory error (torch's OutOfMemoryError, or
    a RuntimeError saying so, as older torch and some kernels raise it)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    text = str(exc)
    return isinstance(exc, RuntimeError) and "out of memory" in text.lower() and ("CUDA" in text or "HIP" in text)


def batch_of(config_cls, kwargs: dict) -> int | None:
    """Returns the batch size the config class `config_cls` gets from `kwargs` (its default
    when not given), or None when it has no batch_size field."""
    for f in dataclasses.fields(config_cls):
        if f.name == BATCH_FIELD:
            return kwargs.get(BATCH_FIELD, f.default if f.default is not dataclasses.MISSING else None)
    return None


class BatchBackoff:
    """The batch sizes one job runs with: its recipe config's ("batch_size") and its task
    config's ("eval_batch_size"), each (config class, kwargs), halved after every
    out-of-memory error, at most OOM_RETRIES times. `retries` counts the halvings."""

    def __init__(self, recipe_cls, recipe_kwargs: dict, task_cls, task_kwargs: dict):
        self.parts = {"batch_size": (recipe_cls, dict(recipe_kwargs)), "eval_batch_size": (task_cls, dict(task_kwargs))}
        self.retries = 0

    def kwargs(self, name: str) -> dict:
        """Returns the config kwargs of part `name` ("batch_size" or "eval_batch_size") as they are now."""
        return self.parts[name][1]

    def sizes(self) -> dict[str, int]:
        """Returns {part name: its batch size now} for the parts that have one."""
        out = {}
        for name, (cls, kw) in self.parts.items():
            b = batch_of(cls, kw) if cls is not None else None
            if b is not None:
                out[name] = b
        return out

    def record(self) -> dict:
        """Returns what a report carries after a back-off ({} before any): oom_retries and
        the oom_<part> batch sizes the job now runs with."""
        if not self.retries:
            return {}
        return {"oom_retries": self.retries, **{f"oom_{k}": v for k, v in self.sizes().items()}}

    def back_off(self, exc: BaseException, device) -> str:
        """Halves every integer batch above 1 after the out-of-memory error `exc` and returns
        the log line saying so; raises RuntimeError (the job's reason) when OOM_RETRIES
        halvings were done already or nothing is left to halve."""
        before = self.sizes()
        halvable = {k: v for k, v in before.items() if isinstance(v, int) and v > 1}
        if self.retries >= OOM_RETRIES or not halvable:
            raise RuntimeError(f"out of memory on {device} after {self.retries} batch-size halving(s) "
                               f"(batch_size {before.get('batch_size', '-')}, eval batch_size "
                               f"{before.get('eval_batch_size', '-')}): {str(exc).splitlines()[0][:200]}") from exc
        for name, b in halvable.items():
            cls, kw = self.parts[name]
            self.parts[name] = (cls, {**kw, BATCH_FIELD: b // 2})
        self.retries += 1
        after = self.sizes()
        return (f"out of memory on {device}: running the job again with "
                + ", ".join(f"{k.replace('_', ' ')} {before[k]} -> {after[k]}" for k in before)
                + f" (retry {self.retries}/{OOM_RETRIES})")


def free_device_memory() -> None:
    """Releases what the failed attempt left cached on the GPU (objects it held first)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def cap_gpu_memory(kind) -> float | None:
    """A worker holding a fraction of a GPU (several workers per device) caps this process's
    CUDA allocator at that fraction of the GPU's memory, so that a job too large for its
    share runs out of memory on its own worker (and backs off) instead of starving the
    jobs of its neighbours. Returns the fraction set, or None (a whole GPU, or no CUDA)."""
    share = kind.resources.get("GPU", 0)
    if kind.torch_device != "cuda" or not 0 < share < 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.set_per_process_memory_fraction(share, torch.cuda.current_device())
    return share
