"""One FP32 model through a task on three runtimes (torch, ONNX Runtime, a TF SavedModel),
and how far apart their numbers are: the check that an exported model is the model."""
from __future__ import annotations

import tempfile
from pathlib import Path

AGREEMENT_KEYS = ("lambada_acc", "lambada_ppl")


def compare_runtimes(model_name: str, task, *, workdir=None, log=print) -> dict:
    """Returns {"runtimes": {"torch"|"onnx"|"tf": the task's metrics}, "max_abs_diff":
    {metric: largest |a - b| over runtime pairs}, "max_rel_diff": {metric: that / the torch
    value}} for zoo name / path / hub id `model_name` evaluated with task config `task`
    (FP32 everywhere, on this process's CPU)."""
    import torch

    from ..jobs import JobContext
    from ..models.loading import load_model
    from ..models.onnx_export import export_causal_lm
    from ..models.tf_export import export_loaded
    from ..registry import TASKS

    loaded = load_model(model_name, device="cpu", log=log)
    cache: dict = {}
    ctx = JobContext(device=torch.device("cpu"), tokenizer=loaded.tokenizer, log=log,
                     cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))
    fn = TASKS.for_config(task).fn
    with tempfile.TemporaryDirectory(prefix="sweeper-runtimes-", dir=workdir) as tmp:
        models = {
            "torch": loaded.model,
            "onnx": export_causal_lm(loaded.model, Path(tmp) / "onnx", source_key=loaded.content_key, log=log),
            "tf": export_loaded(loaded, Path(tmp) / "saved_model", log=log),
        }
        runtimes = {}
        for name, m in models.items():
            runtimes[name] = fn(m, task, ctx)
            log(f"runtimes: {name}: " + ", ".join(f"{k} {runtimes[name][k]:.6g}" for k in AGREEMENT_KEYS))
    names = list(runtimes)
    abs_diff, rel_diff = {}, {}
    for key in AGREEMENT_KEYS:
        vals = [runtimes[n][key] for n in names]
        abs_diff[key] = max(abs(a - b) for a in vals for b in vals)
        ref = runtimes["torch"][key]
        rel_diff[key] = abs_diff[key] / abs(ref) if ref else (0.0 if abs_diff[key] == 0 else float("inf"))
    return {"model": model_name, "runtimes": runtimes, "max_abs_diff": abs_diff, "max_rel_diff": rel_diff}
