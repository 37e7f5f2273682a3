"""Perplexity throughput: Hugging Face's documented loop against sweeper's batched evaluation.

Runs, on the same model and the same sliding windows, in one process:

  HF loop fp32 eager   the loop of https://huggingface.co/docs/transformers/perplexity
  HF loop fp32 sdpa    (batch 1, labels with the already-scored prefix set to -100)
  ours fp32 sdpa       sweeper.tasks.perplexity.wikitext2_perplexity, batched, dtype float32
  ours bf16 sdpa       the same with dtype bfloat16 (autocast; cross-entropy in fp32)

and prints scored tokens per second, the share of a measured compute limit, the perplexity
and its relative difference to the first HF row.

Compute limit (scored tokens/s) = matmul FLOP/s / (2 * params * context / stride), where
matmul FLOP/s is measured here on a square matrix product (bf16 on CUDA, fp32 on CPU),
2 * params is the usual forward cost of one token in FLOPs, and context / stride is how many
tokens are run per scored token (each full window of `context` tokens scores `stride` new
ones). It is an approximation: it leaves out attention's O(context) term and charges the LM
head for every position run (ours runs the head only on scored positions).

    python benchmarks/ppl_throughput.py --device cuda --model gpt2-small-random --context 1024 --stride 512
    python benchmarks/ppl_throughput.py --device cpu            # gpt2-ref (or a mini random GPT-2), ~1-2 min

Needs only torch, transformers and the sweeper package on PYTHONPATH. Token ids: for
gpt2-ref its own tokenizer on the real WikiText-2 test text; for the random models the GPT-2
tokenizer on that text when it is in the local HF cache, else random ids as many as the
GPT-2 tokenizer gives for that split (287,644); the output says which.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("SWEEPER_DATA_DIR") and (_REPO.parent / "shared" / "data").is_dir():
    os.environ["SWEEPER_DATA_DIR"] = str(_REPO.parent / "shared" / "data")

import torch  # noqa: E402

GPT2_TEST_TOKENS = 287_644  # WikiText-2 raw test split under the GPT-2 tokenizer (HF's perplexity page)
MODELS = ("gpt2-ref", "gpt2-small-random", "gpt2-mini-random")


def hf_loop(model, ids, context: int, stride: int, device) -> tuple[float, int]:
    """Returns (summed NLL in nats, scored tokens) by Hugging Face's documented loop: batch 1,
    model(input_ids, labels=target_ids) with the already-scored prefix masked as -100. Each
    window's mean loss is weighted by the labels left after the model's internal shift (the
    page subtracts the batch size, one token too few for windows whose first label is masked)."""
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tokens, prev_end = 0, 0
    ids = ids.to(device)
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + context, len(ids))
            trg_len = end - prev_end
            input_ids = ids[None, begin:end]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            loss = model(input_ids, labels=target_ids).loss
            n = min(trg_len, end - begin - 1)  # labels after the shift: (target_ids[:, 1:] != -100).sum()
            nll_sum += loss.double() * n
            n_tokens += n
            prev_end = end
            if end == len(ids):
                break
    return nll_sum.item(), n_tokens


def matmul_flops(device, seconds: float = 2.0) -> tuple[float, str]:
    """Returns (FLOP/s, description) of a square matrix product: bf16 8192^2 on CUDA, fp32
    2048^2 on CPU, the mean over repeats for about `seconds` after a warm-up."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            _sync(device)
    _sync(device)
    dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt, f"{str(dtype).removeprefix('torch.')} {n}x{n} matmul"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpt2_tokenizer():
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception:
        return None


def _zoo_ref():
    from sweeper.models import zoo
    from sweeper.models.loading import load_model

    path = zoo.zoo_path("gpt2-ref")
    if path is None and not os.environ.get("SWEEPER_CACHE_DIR") and (_REPO / ".sweeper-cache").is_dir():
        os.environ["SWEEPER_CACHE_DIR"] = str(_REPO / ".sweeper-cache")
        path = zoo.zoo_path("gpt2-ref")
    if path is None:
        return None
    return load_model("gpt2-ref", build_missing=False, log=lambda s: None)


def build(name: str, max_tokens: int | None):
    """Returns (model on CPU in eval mode, 1-D LongTensor of token ids, description of the ids, model name used)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sweeper.tasks.perplexity import tokenize_split

    if name == "gpt2-ref":
        lm = _zoo_ref()
        if lm is not None:
            ids, _ = tokenize_split(lm.tokenizer, "wikitext-2-raw-v1", "test")
            return lm.model.float().eval(), ids, "real WikiText-2 test text, gpt2-ref's own tokenizer", name
        print("gpt2-ref is not built (not building it here): using gpt2-mini-random instead")
        name = "gpt2-mini-random"
    torch.manual_seed(0)
    if name == "gpt2-small-random":
        cfg = GPT2Config()  # the 124M GPT-2 small shape
    else:
        cfg = GPT2Config(n_positions=256, n_embd=256, n_layer=4, n_head=4)
    model = GPT2LMHeadModel(cfg).eval()
    tok = _gpt2_tokenizer()
    if tok is not None:
        try:
            ids, _ = tokenize_split(tok, "wikitext-2-raw-v1", "test")
            return model, ids, "real WikiText-2 test text, GPT-2 tokenizer", name
        except Exception as exc:  # no data here
            print(f"WikiText-2 text unavailable ({type(exc).__name__}); using random ids")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (GPT2_TEST_TOKENS,), generator=g)
    return model, ids, f"RANDOM ids ({GPT2_TEST_TOKENS} = GPT-2 tokens of the test split; GPT-2 tokenizer not available)", name


def _ours(model, ids, device, context, stride, dtype, batch_size, chunk, compile_):
    from sweeper.jobs import JobContext
    from sweeper.tasks.perplexity import WikiText2PPL, wikitext2_perplexity

    # the ids are handed over through the task's cache; the tokenizer only names the cache key
    ctx = JobContext(device=device, tokenizer=[], cached=lambda key, b: (ids, SimpleNamespace(join="benchmark")))
    cfg = WikiText2PPL(context_length=context, stride=stride, dtype=dtype, batch_size=batch_size,
                       loss_chunk_tokens=chunk, torch_compile=compile_)
    return wikitext2_perplexity(model, cfg, ctx)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=MODELS, default=None,
                    help="default: gpt2-small-random on cuda, gpt2-ref (else gpt2-mini-random) on cpu")
    ap.add_argument("--context", type=int, default=None, help="window tokens (default: the model's positions)")
    ap.add_argument("--stride", type=int, default=None, help="tokens between windows (default: context // 2)")
    ap.add_argument("--max-tokens", type=int, default=None, help="first N tokens only (default: all on cuda, 40000 on cpu)")
    ap.add_argument("--batch-size", default="auto", help="windows per batch for ours, or 'auto'")
    ap.add_argument("--loss-chunk-tokens", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="also time ours bf16 with torch.compile on the body")
    ap.add_argument("--skip-eager", action="store_true", help="leave out the HF loop with eager attention")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows stay true fp32
    name = args.model or ("gpt2-small-random" if device.type == "cuda" else "gpt2-ref")
    max_tokens = args.max_tokens if args.max_tokens is not None else (None if device.type == "cuda" else 40_000)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)

    model, ids, id_source, name = build(name, max_tokens)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    model = model.to(device)
    positions = model.config.n_positions
    context = args.context or positions
    stride = args.stride or context // 2
    n_params = sum(p.numel() for p in model.parameters())
    flops, flops_desc = matmul_flops(device)
    limit = flops / (2 * n_params * context / stride)

    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads); torch {torch.__version__}; "
          f"transformers {__import__('transformers').__version__}")
    print(f"model: {name}, {n_params / 1e6:.1f}M params; context {context}, stride {stride}; "
          f"{len(ids)} tokens: {id_source}")
    print(f"compute limit: {flops_desc} {flops / 1e12:.2f} TFLOP/s -> {limit:,.0f} scored tokens/s "
          f"(= FLOP/s / (2 * params * context / stride))")

    rows = []

    def timed(label, fn):
        _sync(device)
        t0 = time.perf_counter()
        nll, n, extra = fn()
        _sync(device)
        dt = time.perf_counter() - t0
        rows.append((label, n / dt, nll / n, n, extra))
        print(f"  {label}: {dt:.2f}s", flush=True)

    warm = ids[: min(len(ids), 4 * context)]
    for impl in (("sdpa",) if args.skip_eager else ("eager", "sdpa")):
        model.set_attn_implementation(impl)
        hf_loop(model, warm, context, stride, device)
        timed(f"HF loop fp32 {impl} (batch 1)", lambda: (*hf_loop(model, ids, context, stride, device), ""))
    model.set_attn_implementation("sdpa")
    variants = [("float32", False), ("bfloat16", False)] + ([("bfloat16", True)] if args.compile else [])
    for dtype, comp in variants:
        # on CUDA a whole untimed run first, so that compiling for every batch shape is not timed
        _ours(model, ids if device.type == "cuda" else warm, device, context, stride, dtype, batch_size,
              args.loss_chunk_tokens, comp)

        def run(dtype=dtype, comp=comp):
            r = _ours(model, ids, device, context, stride, dtype, batch_size, args.loss_chunk_tokens, comp)
            s = r["eval_settings"]
            return (r["wikitext2_nll"] * r["wikitext2_scored_tokens"], r["wikitext2_scored_tokens"],
                    f"batch {s['batch_size']}, {s['compute_dtype']}, {s['attn_implementation']}")

        short = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
        timed(f"ours {short} sdpa batched{' compiled' if comp else ''}", run)

    ref_ppl = math.exp(rows[0][2])
    print()
    head = f"{'method':<36} {'tokens/s':>12} {'% limit':>8} {'perplexity':>12} {'Δ ppl vs HF':>12}  notes"
    print(head)
    print("-" * len(head))
    for label, tps, mean_nll, n, extra in rows:
        ppl = math.exp(mean_nll)
        print(f"{label:<36} {tps:>12,.0f} {100 * tps / limit:>7.2f}% {ppl:>12.4f} {100 * (ppl - ref_ppl) / ref_ppl:>+11.4f}%  {extra}")
    counts = {r[3] for r in rows}
    print(f"\nscored tokens: {sorted(counts)} (all methods score the same tokens: {len(counts) == 1})")
    hf_rows = [r for r in rows if r[0].startswith("HF")]
    for r in rows:
        if r[0].startswith("ours"):
            print(f"{r[0]}: " + ", ".join(f"{r[1] / h[1]:.1f}x {h[0]}" for h in hf_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
