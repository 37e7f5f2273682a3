"""LAMBADA last-word accuracy and target-word perplexity, with latency and throughput, for a
torch causal LM, an ONNX graph (onnxruntime) or a TensorFlow SavedModel.

Each passage is split into a context and its last word (lm-eval-harness' split); the
context and " " + word are tokenized separately, the model reads context + word (less its
last token), and:

- a passage counts as correct when the greedy (argmax) prediction equals every token of
  the target word (`lambada_acc`, percent of passages);
- `lambada_ppl` is exp of the mean over passages of the target word's NLL (the sum over
  its tokens, in nats): perplexity per target word, as lm-eval-harness reports it.

Passages are run right-padded in batches of similar length (a causal model's logits at real
positions do not depend on later padding), so every backend gets only input_ids. Latency
is the median wall time of one forward pass over real passages after warm-up runs, at
batch 1 (`latency_ms`, `samples_per_s`) and at `timing_batch_size`
(`latency_ms_b{N}`, `samples_per_s_b{N}`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..config import check_choice, check_int
from ..registry import TASKS

OBJECTIVES = {"lambada_acc": "max", "lambada_ppl": "min"}


@dataclass(frozen=True)
class LambadaTask:
    """LAMBADA evaluation (see the module docstring).

    objective: the metric a sweep optimises, "lambada_acc" (max; real checkpoints) or
    "lambada_ppl" (min; small reference models, which score near 0% accuracy).
    max_samples: evaluate the first N passages only (None: all 5,153).
    batch_size: passages per forward pass in the accuracy pass.
    timing_batch_size: the larger batch timed besides batch 1 (0: batch 1 only).
    warmup_runs / timed_runs: forward passes before timing, and timed, per batch size.
    """

    objective: str = "lambada_acc"
    max_samples: int | None = None
    batch_size: int = 16
    timing_batch_size: int = 8
    warmup_runs: int = 3
    timed_runs: int = 20

    def __post_init__(self):
        where = "task lambada"
        check_choice(where, "objective", self.objective, tuple(OBJECTIVES))
        if self.max_samples is not None:
            check_int(where, "max_samples", self.max_samples, 1, 1_000_000)
        check_int(where, "batch_size", self.batch_size, 1, 4096)
        check_int(where, "timing_batch_size", self.timing_batch_size, 0, 4096)
        check_int(where, "warmup_runs", self.warmup_runs, 0, 1000)
        check_int(where, "timed_runs", self.timed_runs, 1, 10_000)

    @property
    def metric(self) -> str:
        """Returns the metric a sweep optimises (the objective)."""
        return self.objective

    @property
    def mode(self) -> str:
        """Returns "max" for accuracy, "min" for perplexity."""
        return OBJECTIVES[self.objective]

    def check_data(self) -> None:
        """Raises DataNotFoundError (one line) unless the LAMBADA test set can be read."""
        from ..data.lambada import load_lambada

        load_lambada()


@dataclass(frozen=True)
class Sample:
    """One passage as token ids: the model reads `context + target[:-1]`."""

    context: tuple[int, ...]
    target: tuple[int, ...]


def tokenize_passages(tokenizer, texts, max_positions: int) -> list[Sample]:
    """Returns one Sample per passage: context and " " + last word tokenized separately,
    the context cut from the left so context + target fits `max_positions` tokens."""
    from ..data.lambada import split_target

    contexts, words = zip(*(split_target(t) for t in texts))
    ctx_ids = tokenizer(list(contexts), return_attention_mask=False, verbose=False)["input_ids"]
    tgt_ids = tokenizer([" " + w for w in words], return_attention_mask=False, verbose=False)["input_ids"]
    out = []
    for c, t in zip(ctx_ids, tgt_ids):
        keep = max_positions - len(t) + 1  # the last target token is never fed
        out.append(Sample(tuple(c[-keep:]) if keep > 0 else (), tuple(t)))
    return out


def padded_batch(samples, pad_id: int):
    """Returns (ids int64 [batch, longest input], input lengths) for `samples`, right-padded."""
    import numpy as np

    rows = [s.context + s.target[:-1] for s in samples]
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, [len(r) for r in rows]


def score_batch(logits, samples, lengths) -> list[tuple[bool, float]]:
    """Returns (all target tokens predicted greedily, target NLL in nats) per sample, from
    the batch's logits (numpy or torch, [batch, seq, vocab])."""
    import torch

    logits = torch.as_tensor(logits)
    out = []
    for row, (s, n) in enumerate(zip(samples, lengths)):
        k = len(s.target)
        lg = logits[row, n - k : n].float()  # position p predicts token p + 1
        tgt = torch.tensor(s.target)
        nll = torch.nn.functional.cross_entropy(lg, tgt, reduction="sum").item()
        out.append((bool(torch.equal(lg.argmax(-1), tgt)), nll))
    return out


def logits_runner(model, ctx):
    """Returns (callable numpy int64 ids -> logits, runtime description) for a torch
    causal LM, an OnnxModel or a TFSavedModel."""
    from ..models.onnx_export import OnnxModel
    from ..models.tf_export import TFSavedModel

    if isinstance(model, OnnxModel):
        from ..devices.kinds import KINDS
        from ..devices.ort_session import create_session
        from ..models.onnx_export import INPUT_NAME, OUTPUT_NAME

        import onnxruntime as ort

        session = create_session(model.path, getattr(ctx, "kind", None) or KINDS["cpu"],
                                 precision=model.info.get("precision"))
        return (lambda ids: session.run([OUTPUT_NAME], {INPUT_NAME: ids})[0],
                f"onnxruntime {ort.__version__} {', '.join(session.get_providers())}")
    if isinstance(model, TFSavedModel):
        import tensorflow as tf

        return model.runner(), f"tensorflow {tf.__version__} SavedModel serving_default"
    import torch

    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device or "cpu")

    def run(ids):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids).to(device), use_cache=False).logits.float().cpu()

    return run, f"torch {torch.__version__} {device}"


def max_positions(model) -> int:
    """Returns the longest input the model accepts, in tokens."""
    if hasattr(model, "max_positions"):
        return model.max_positions
    from ..models.onnx_export import max_positions_of

    return max_positions_of(model)


def timed(run, batches, warmup: int, runs: int) -> float:
    """Returns the median wall time (s) of `run(ids)` over `runs` passes after `warmup`
    untimed ones, cycling through `batches` (a list of ids arrays)."""
    import statistics

    for i in range(warmup):
        run(batches[i % len(batches)])
    times = []
    for i in range(runs):
        ids = batches[i % len(batches)]
        t0 = time.perf_counter()
        run(ids)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lambada(model, config: LambadaTask, ctx) -> dict:
    """Returns {'lambada_acc': percent of passages whose last word is predicted exactly
    (greedy), 'lambada_ppl': exp(mean target-word NLL), 'lambada_nll': that mean (nats per
    word), 'lambada_samples', 'latency_ms' (median ms per forward pass, batch 1),
    'samples_per_s' (passages per second, batch 1), the same two at timing_batch_size
    with a _b{N} suffix, 'eval_seconds', 'eval_settings'} for a torch, ONNX or TF model."""
    from ..data.lambada import load_lambada

    data = ctx.cached(("lambada-texts",), load_lambada)
    n_pos = max_positions(model)
    texts = data.texts[: config.max_samples] if config.max_samples is not None else data.texts
    key = ("lambada-tokens", getattr(ctx.tokenizer, "name_or_path", id(ctx.tokenizer)), len(ctx.tokenizer),
           data.sha256, len(texts), n_pos)
    samples = ctx.cached(key, lambda: tokenize_passages(ctx.tokenizer, texts, n_pos))
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    run, runtime = logits_runner(model, ctx)

    t0 = time.perf_counter()
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].context) + len(samples[i].target))
    results: list = [None] * len(samples)
    for b in range(0, len(order), config.batch_size):
        ctx.check_cancelled()
        idx = order[b : b + config.batch_size]
        chunk = [samples[i] for i in idx]
        ids, lengths = padded_batch(chunk, pad_id)
        for i, r in zip(idx, score_batch(run(ids), chunk, lengths)):
            results[i] = r
    eval_seconds = time.perf_counter() - t0
    correct = sum(ok for ok, _ in results)
    mean_nll = sum(nll for _, nll in results) / len(results)

    # timing: batches of real passages in the data's own order (not sorted by length)
    timing = {}
    for bs in [1] + ([config.timing_batch_size] if config.timing_batch_size > 1 else []):
        ctx.check_cancelled()
        n = max(1, min(len(samples) // bs, config.warmup_runs + config.timed_runs))
        batches = [padded_batch(samples[i * bs : (i + 1) * bs], pad_id)[0] for i in range(n)]
        batches = [b for b in batches if b.shape[0] == bs] or batches
        median_s = timed(run, batches, config.warmup_runs, config.timed_runs)
        suffix = "" if bs == 1 else f"_b{bs}"
        timing[f"latency_ms{suffix}"] = round(1000 * median_s, 3)
        timing[f"samples_per_s{suffix}"] = round(batches[0].shape[0] / median_s, 2)
    return {
        "lambada_acc": 100.0 * correct / len(results),
        "lambada_ppl": math.exp(mean_nll) if mean_nll < 709 else float("inf"),
        "lambada_nll": mean_nll,
        "lambada_samples": len(results),
        **timing,
        "eval_seconds": round(eval_seconds, 3),
        "eval_settings": {
            "dataset": "lambada_openai", "split": "test", "source": data.source, "samples": len(results),
            "max_samples": config.max_samples, "batch_size": config.batch_size, "max_positions": n_pos,
            "target": "last space-separated word, tokenized as ' ' + word, every token greedy",
            "timing": {"batch_sizes": [1] + ([config.timing_batch_size] if config.timing_batch_size > 1 else []),
                       "warmup_runs": config.warmup_runs, "timed_runs": config.timed_runs,
                       "inputs": "real passages in file order, right-padded per batch"},
            "runtime": runtime,
            "unit": "lambada_acc in percent of passages; lambada_ppl = exp(mean NLL per target word, nats); "
                    "latency_ms per forward pass (median); samples_per_s = batch / median latency",
        },
        **({"model_size_mb": round(model.size_mb(), 4)} if hasattr(model, "size_mb") else {}),
    }


TASKS.register("lambada", lambada)(LambadaTask)
