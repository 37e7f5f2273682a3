"""The torch side of the ONNX experiments on each device, measured in one run, and whether
onnxruntime here can run a device kind at all.

Where onnxruntime's CUDA execution provider is not installed (the onnxruntime-gpu wheel),
the ONNX sweeps refuse the `cuda` kind; what a GPU still speeds up is the torch side:
exporting the graph and evaluating the torch model. This prints, per device and model:
ONNX export seconds, torch WikiText-2 perplexity and scored tokens/s in FP32 and FP16, and
the FP16/FP32 and cuda/cpu throughput ratios; then the line the sweeper gives for a `cuda`
worker on this node's onnxruntime.

    python benchmarks/device_torch_side.py                 # cpu, and cuda when present
    python benchmarks/device_torch_side.py --max-tokens 65536 --models gpt2-ref,opt-ref
"""
from __future__ import annotations

import argparse
import tempfile
import time


def _models(names: list[str]):
    """Yields (name, model, tokenizer or None) for zoo names and the random 124M shapes."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    from sweeper.models.loading import load_model

    for name in names:
        if name == "gpt2-small-random":
            torch.manual_seed(0)
            yield name, GPT2LMHeadModel(GPT2Config()).eval(), None
        elif name == "opt-125m-random":
            torch.manual_seed(0)
            yield name, OPTForCausalLM(OPTConfig(word_embed_proj_dim=768, ffn_dim=3072, hidden_size=768,
                                                 num_attention_heads=12, num_hidden_layers=12)).eval(), None
        else:
            loaded = load_model(name)
            yield name, loaded.model.eval(), loaded.tokenizer


def _perplexity(model, tok, device: str, dtype: str, max_tokens: int, batch_size: int):
    import torch

    from sweeper.jobs import JobContext
    from sweeper.tasks.perplexity import WikiText2PPL, wikitext2_perplexity

    cache: dict = {}
    ctx = JobContext(device=torch.device(device), tokenizer=tok,
                     cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))
    task = WikiText2PPL(max_tokens=max_tokens, batch_size=batch_size, dtype=dtype)
    wikitext2_perplexity(model, WikiText2PPL(max_tokens=2048, batch_size=batch_size, dtype=dtype), ctx)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = wikitext2_perplexity(model, task, ctx)
    if device == "cuda":
        torch.cuda.synchronize()
    return r["wikitext2_ppl"], r["wikitext2_scored_tokens"] / (time.perf_counter() - t0)


def main() -> int:
    """Prints the table and the ratios; returns 0."""
    import torch

    from sweeper.models.onnx_export import export_causal_lm
    from sweeper.reports.tracking import format_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2-ref,opt-ref,opt-125m-random")
    ap.add_argument("--max-tokens", type=int, default=32_768)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name, model, tok in _models(args.models.split(",")):
        for device in devices:
            model.to(device)
            row = {"model": name, "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}"}
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                onnx_model = export_causal_lm(model, f"{d}/m", log=lambda m: None)
                row["export s"] = time.perf_counter() - t0
                row["export max|Δlogit|"] = onnx_model.info["export_max_abs_logit_diff"]
            if tok is not None:  # perplexity needs the model's own tokenizer
                for dtype, label in (("float32", "fp32"), ("float16", "fp16")):
                    if device == "cpu" and dtype == "float16":
                        continue  # no fp16 matmul kernels worth timing on this CPU
                    ppl, tps = _perplexity(model, tok, device, dtype, args.max_tokens, args.batch_size)
                    row[f"ppl {label}"], row[f"tok/s {label}"] = ppl, tps
            rows.append(row)
            model.to("cpu")
    cols = ["model", "device", "export s", "export max|Δlogit|", "ppl fp32", "tok/s fp32", "ppl fp16", "tok/s fp16"]
    print(format_table(rows, cols))
    by = {(r["model"], r["device"].startswith("cpu")): r for r in rows}
    for name in {r["model"] for r in rows}:
        cpu, gpu = by.get((name, True)), by.get((name, False))
        if cpu and gpu:
            line = f"{name}: export cuda/cpu time ratio {gpu['export s'] / cpu['export s']:.2f}"
            if "tok/s fp32" in cpu:
                line += (f"; torch eval tokens/s cuda fp32 / cpu fp32 = {gpu['tok/s fp32'] / cpu['tok/s fp32']:.1f}x, "
                         f"cuda fp16 / cpu fp32 = {gpu['tok/s fp16'] / cpu['tok/s fp32']:.1f}x, "
                         f"fp16 vs fp32 ppl {100 * (gpu['ppl fp16'] - gpu['ppl fp32']) / gpu['ppl fp32']:+.4f}%")
            print(line)
    from sweeper.devices.kinds import KINDS
    from sweeper.devices.ort_session import ProviderUnavailable, check_provider

    for kind in ("cpu", "cuda"):
        try:
            check_provider(KINDS[kind])
            print(f"onnxruntime here runs kind '{kind}' ({KINDS[kind].provider})")
        except ProviderUnavailable as exc:
            print(f"onnxruntime here refuses kind '{kind}': {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
