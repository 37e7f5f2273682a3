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


def halve_batches(parts: list[tuple[type, dict]]) -> list[dict] | None:
    """Returns each (config class, kwargs) pair's kwargs with its batch size halved (those
    without one unchanged), or None when no batch can be halved any more (all are 1 or
    absent)."""
    out, halved = [], False
    for cls, kwargs in parts:
        b = batch_of(cls, kwargs) if cls is not None else None
        if isinstance(b, int) and b > 1:
            out.append({**kwargs, BATCH_FIELD: b // 2})
            halved = True
        else:
            out.append(dict(kwargs))
    return out if halved else None


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
