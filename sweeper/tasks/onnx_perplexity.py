"""WikiText-2 perplexity of an ONNX causal LM through an onnxruntime InferenceSession.

Same windows, tokens and settings as the torch path (`perplexity.py`), so the two agree on
the same FP32 model; the session runs on the job's device kind and never falls back to the
CPU silently. The model's size on disk is reported with the perplexity.
"""
from __future__ import annotations

import time

from ..models.onnx_export import INPUT_NAME, OUTPUT_NAME, OnnxModel


def onnx_wikitext2_perplexity(model: OnnxModel, config, ctx) -> dict:
    """Returns the torch task's keys (wikitext2_ppl, wikitext2_nll in nats/token,
    wikitext2_scored_tokens, eval_settings) plus model_size_mb (MB of 2**20 bytes on disk),
    eval_seconds (s), tokens_per_s (scored tokens per second over the whole evaluation) and
    latency_ms (median ms of one session.run on a full batch of full-length windows;
    None when there is no such batch) for `model`."""
    import numpy as np
    import torch

    from ..devices.kinds import KINDS
    from ..devices.ort_session import create_session
    from .perplexity import CPU_AUTO_BATCH
    from .windows import by_length, evaluation_tokens, perplexity_result, perplexity_windows

    ids, text = evaluation_tokens(config, ctx)
    context_length, stride = config.resolved(model.max_positions)
    windows = perplexity_windows(len(ids), context_length, stride)
    kind = getattr(ctx, "kind", None) or KINDS["cpu"]
    session = create_session(model.path, kind, precision=model.info.get("precision"))
    # "auto" sizes torch batches from free GPU memory; an ORT session's memory is its own
    batch_size = config.batch_size if isinstance(config.batch_size, int) else CPU_AUTO_BATCH
    ids_np = ids.numpy().astype(np.int64)
    nll_sum, scored = 0.0, 0
    full_batch_s = []  # wall time of each full batch of full-length windows
    t0 = time.perf_counter()
    for length, group in by_length(windows).items():
        for i in range(0, len(group), batch_size):
            ctx.check_cancelled()
            chunk = group[i : i + batch_size]
            batch = np.stack([ids_np[w.begin : w.end] for w in chunk])
            t_run = time.perf_counter()
            logits = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
            if length == context_length and len(chunk) == batch_size:
                full_batch_s.append(time.perf_counter() - t_run)
            for row, w in enumerate(chunk):
                lg = logits[row, w.scored].float()
                tgt = torch.from_numpy(batch[row, w.scored.start + 1 : w.scored.stop + 1])
                nll_sum += torch.nn.functional.cross_entropy(lg, tgt, reduction="sum").item()
                scored += tgt.numel()
    seconds = time.perf_counter() - t0
    result = perplexity_result(nll_sum, scored, config, context_length, stride, text.join, {
        "dtype": "float32",
        "batch_size": batch_size,
        "precision": model.info.get("precision", "fp32"),
        "runtime": f"onnxruntime {_ort_version()} {', '.join(session.get_providers())}",
        "unit": "perplexity (exp of mean NLL in nats per scored token); model_size_mb in MB of 2**20 bytes; "
                "latency_ms per batch of batch_size windows",
    })
    return {
        **{k: v for k, v in result.items() if k != "eval_settings"},
        "model_size_mb": round(model.size_mb(), 4),
        "eval_seconds": round(seconds, 3),
        "tokens_per_s": round(scored / seconds, 1) if seconds > 0 else None,
        "latency_ms": round(1000 * float(np.median(full_batch_s)), 3) if full_batch_s else None,
        "eval_settings": result["eval_settings"],
    }


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
