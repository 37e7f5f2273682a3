"""One QAT training step (aimet-torch QuantSim, the aimet_qat recipe) against plain training.

Measures training steps (forward + LM loss + backward + AdamW step) of a randomly initialised
GPT-2-shaped model (GPT-2 small by default: 12 layers, width 768, 12 heads, 1024 positions,
vocab 50257; sequences of 512 tokens, batch 8) in one run, for these variants:

  fp32                plain transformers GPT2LMHeadModel, fp32 (TF32 off on CUDA)
  fp32_tf32           the same with TF32 tensor-core matmuls (CUDA)
  bf16_autocast       the same under torch.autocast(device_type, dtype=torch.bfloat16)
  qat                 the aimet QuantSim of the model built exactly as the aimet_qat recipe
                      builds it (sweeper.recipes.aimet_qat: prepare_workload, build_quantsim,
                      calibrate) with the seed config: quant_scheme range_learning_tf, W8A8,
                      input quantization, activation ranges clamped to +-30, calibrated on
                      2 random batches; trained in fp32
  qat_tf32            the same sim with TF32 matmuls (the recipe's `tf32=True`)
  qat_bf16_autocast   the same sim trained under bf16 autocast (an error is reported in the
                      table, not raised, when aimet refuses it)

Every variant gets the same random token batches (labels = inputs), a fresh AdamW built by
the recipe's own optimizer function (lr 5e-5, no weight decay, constant rate), the model in
train mode (dropout on), `--warmup` untimed steps, then `--steps` timed steps, each timed
alone between torch.cuda.synchronize calls on CUDA. It prints the device and versions, then
a table: tokens/s (timed tokens / summed step time), the median step in ms, the peak CUDA
memory of the variant's training (torch.cuda.max_memory_allocated, reset per variant; "-"
on CPU) and tokens/s relative to fp32. `--json PATH` writes the same as JSON. `--profile`
runs torch.profiler over 5 more QAT steps and prints the top 15 ops by self CUDA time (self
CPU time on CPU), the share of that time in ops whose name contains "quantize" (each aimet
quantizer call is wrapped in a profiler range named "aimet_quantizer_forward (quantize)"
while profiling; its self time is the quantizers' Python overhead), and the share of every op
run for a quantizer, forward (inside that range) and backward (under aimet's
QuantDequantFuncBackward-style autograd nodes): the fake-quantization's whole cost.

No download: the model is built from a GPT2Config, the token ids are random.

    python benchmarks/qat_step.py --device cuda
    python benchmarks/qat_step.py --device cuda --profile --json qat_step.json
    python benchmarks/qat_step.py --device cpu --layers 2 --width 64 --heads 2 --vocab 512 \\
        --seq-len 32 --batch-size 2 --steps 3 --warmup 1          # tiny check, ~20 s
                                                                  # (add --threads 1 on a busy CPU)

Needs torch, transformers, aimet-torch and the sweeper package (found from this file's
location when not installed). aimet is imported (seconds) only when a QAT variant runs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

VARIANTS = ("fp32", "fp32_tf32", "bf16_autocast", "qat", "qat_tf32", "qat_bf16_autocast")
PROFILE_STEPS = 5
TOP_OPS = 15


def parse_args(argv=None) -> argparse.Namespace:
    """Returns the parsed command line (defaults: GPT-2 small, seq 512, batch 8, 5 + 20 steps)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768, help="n_embd")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--positions", type=int, default=1024, help="n_positions (at least --seq-len)")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (8..4096, the recipe's limits)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--profile", action="store_true", help=f"profile {PROFILE_STEPS} QAT steps")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def build_model(args):
    """Returns a randomly initialised transformers GPT2LMHeadModel (on CPU, fp32, eval mode)
    of the shape the flags give; seeded by --seed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=max(args.positions, args.seq_len), n_embd=args.width,
                     n_layer=args.layers, n_head=args.heads,
                     bos_token_id=args.vocab - 1, eos_token_id=args.vocab - 1)
    return GPT2LMHeadModel(cfg).eval()


def qat_config(args):
    """Returns the recipe's AimetQATConfig with the seed settings (range_learning_tf, W8A8,
    input quantization, clamp 30), 2 calibration batches, and this run's sequence length
    and batch size (other fields: the recipe's defaults, e.g. lr 5e-5, weight decay 0)."""
    from sweeper.recipes.aimet_qat import AimetQATConfig

    return AimetQATConfig(quant_scheme="range_learning_tf", param_bw=8, output_bw=8, input_quantization=True,
                          clamp_value=30.0, batch_size=args.batch_size, seq_len=args.seq_len, calibration_batches=2,
                          seed=args.seed)


class RandomTokenizer:
    """Stands in for a tokenizer in the job context: any text becomes `n_tokens` random ids
    below `vocab` (seeded), so the recipe's own token-block path needs no data or download."""

    def __init__(self, vocab: int, n_tokens: int, seed: int):
        self.vocab, self.n_tokens, self.seed = vocab, n_tokens, seed
        self.name_or_path = f"random-ids-{vocab}-{n_tokens}-{seed}"

    def __len__(self) -> int:
        """Returns the vocabulary size (ids are below it)."""
        return self.vocab

    def __call__(self, text, **kwargs) -> dict:
        """Returns {"input_ids": a list of n_tokens random ids}, whatever `text` is."""
        gen = torch.Generator().manual_seed(self.seed)
        return {"input_ids": torch.randint(0, self.vocab, (self.n_tokens,), generator=gen).tolist()}


def job_context(args, device):
    """Returns a sweeper JobContext on `device` whose training text tokenizes to random ids:
    blocks of --seq-len tokens for the recipe's 2 calibration batches."""
    from types import SimpleNamespace

    from sweeper.jobs import JobContext

    n_tokens = args.seq_len * args.batch_size * 2
    text = SimpleNamespace(text="(random token ids)", sha256=f"random-{n_tokens}-{args.seed}")
    return JobContext(device=device, tokenizer=RandomTokenizer(args.vocab, n_tokens, args.seed), train_text=text,
                      seed=args.seed)


def training_batches(args, device) -> list:
    """Returns warm-up + timed + profiled batches: LongTensors (batch, seq_len) of random
    ids on `device`, the same for every variant (labels are the inputs)."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    n = args.warmup + args.steps + PROFILE_STEPS
    return [torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=gen).to(device) for _ in range(n)]


def build_qat_sim(model, args, device):
    """Returns (sim, info): the aimet QuantizationSimModel of a copy of `model` prepared,
    built and calibrated by the aimet_qat recipe's own functions (prepare_workload,
    build_quantsim, calibrate) with qat_config(args); info has the preparation counts, the
    number of clamped activation ranges and the quantizer count."""
    from aimet_torch.quantization.base import QuantizerBase

    from sweeper.recipes.aimet_qat import build_quantsim, calibrate, prepare_workload

    cfg = qat_config(args)
    ctx = job_context(args, device)
    torch.manual_seed(cfg.seed)
    work, device, info = prepare_workload(model, cfg, ctx)
    sim = build_quantsim(work, cfg, device)
    info["activation_ranges_clamped"] = calibrate(sim, work, cfg, ctx, device)
    info["quantizers"] = sum(isinstance(m, QuantizerBase) for m in sim.model.modules())
    return sim, info


def optimizer_for(model):
    """Returns a fresh AdamW over `model`'s trainable parameters, made by the function the
    QAT recipe trains with, with the recipe's default lr (5e-5) and weight decay (0), constant."""
    from sweeper.models.training import adamw_with_schedule
    from sweeper.recipes.aimet_qat import AimetQATConfig

    cfg = AimetQATConfig()
    opt, _ = adamw_with_schedule(model, lr=cfg.lr, weight_decay=cfg.weight_decay, total_steps=1, warmup_frac=0.0)
    return opt


def plain_loss(model):
    """Returns f(ids) -> the scalar LM loss tensor of a transformers causal LM on ids (labels = ids)."""
    return lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss


def sim_loss(sim):
    """Returns f(ids) -> the scalar LM loss tensor of the QuantSim model (the recipe's wrapper
    returns (loss, logits) when given labels)."""
    return lambda ids: sim.model(ids, labels=ids)[0]


def autocast_for(device, bf16: bool):
    """Returns the context manager a step runs under: bf16 autocast on the device's type, or none."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def train_step(loss_fn, opt, ids, device, bf16: bool) -> torch.Tensor:
    """Runs one training step (forward + loss under the variant's autocast, backward, AdamW
    step); returns the loss tensor (not synchronised)."""
    with autocast_for(device, bf16):
        loss = loss_fn(ids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def synchronize(device) -> None:
    """Waits for the device's queued work (CUDA only; nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(loss_fn, opt, batches, args, device, bf16: bool) -> list[float]:
    """Runs --warmup untimed steps then --steps timed ones; returns each timed step's wall
    time in seconds (synchronised before and after on CUDA). Raises FloatingPointError on a
    loss that is not finite."""
    for ids in batches[: args.warmup]:
        train_step(loss_fn, opt, ids, device, bf16)
    times = []
    for ids in batches[args.warmup: args.warmup + args.steps]:
        synchronize(device)
        t0 = time.perf_counter()
        loss = train_step(loss_fn, opt, ids, device, bf16)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    if not torch.isfinite(loss.detach()).item():
        raise FloatingPointError(f"training loss is {loss.item()}")
    return times


def reset_memory(device) -> None:
    """Frees cached memory and resets the peak-memory counter (CUDA only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device) -> float | None:
    """Returns torch.cuda.max_memory_allocated since the last reset, in MiB (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def measure(name: str, loss_fn, model, batches, args, device, bf16: bool) -> dict:
    """Returns the row of one variant: {"variant", "tokens_per_s" (timed tokens / summed step
    seconds), "step_ms" (median step, ms), "peak_mem_mb" (MiB, None on CPU), "error": None},
    training `model` (train mode) through `loss_fn` with a fresh AdamW."""
    model.train()
    opt = optimizer_for(model)
    reset_memory(device)
    times = timed_steps(loss_fn, opt, batches, args, device, bf16)
    tokens = args.batch_size * args.seq_len * len(times)
    row = {"variant": name, "tokens_per_s": tokens / sum(times), "step_ms": 1e3 * statistics.median(times),
           "peak_mem_mb": peak_memory_mb(device), "error": None}
    del opt
    return row


def error_row(name: str, exc: BaseException) -> dict:
    """Returns the row of a variant that failed: no numbers, "error": the exception's type and
    first line of text (at most 300 characters)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return {"variant": name, "tokens_per_s": None, "step_ms": None, "peak_mem_mb": None,
            "error": f"{type(exc).__name__}: {text}"[:300]}


def run_plain(name: str, args, device, batches, bf16: bool) -> dict:
    """Returns the row (see measure) of plain training of a fresh model, or error_row on failure."""
    try:
        model = build_model(args).to(device)
        row = measure(name, plain_loss(model), model, batches, args, device, bf16)
        del model
        return row
    except Exception as exc:  # a variant's failure goes into the table
        return error_row(name, exc)


def run_qat(names: list[str], args, device, batches) -> tuple[list[dict], object, dict]:
    """Returns (rows, sim, info): one row per QAT variant in `names` (qat in fp32,
    qat_bf16_autocast under bf16 autocast: see measure; error_row on failure), all on one
    sim built by build_qat_sim (None, with {"error": ...} as info, when building fails)."""
    try:
        sim, info = build_qat_sim(build_model(args), args, device)
    except Exception as exc:
        return [error_row(n, exc) for n in names], None, {"error": error_row("qat", exc)["error"]}
    rows = []
    for name in names:
        try:
            with tf32(device, name.endswith("_tf32")):
                rows.append(measure(name, sim_loss(sim), sim.model, batches, args, device, bf16=name.endswith("bf16_autocast")))
        except Exception as exc:
            rows.append(error_row(name, exc))
    return rows, sim, info


@contextlib.contextmanager
def tf32(device, enabled: bool):
    """Within the block, CUDA matmuls use TF32 tensor cores when `enabled` (the *_tf32
    variants; the aimet_qat recipe's `tf32` field does the same), else true fp32."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def add_ratios(rows: list[dict]) -> list[dict]:
    """Returns `rows` with "ratio_vs_fp32": tokens/s over the fp32 row's (None without both)."""
    base = next((r["tokens_per_s"] for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        r["ratio_vs_fp32"] = r["tokens_per_s"] / base if base and r["tokens_per_s"] else None
    return rows


QUANTIZER_RANGE = "aimet_quantizer_forward (quantize)"  # profiler range around each quantizer call


def self_time_us(evt, device) -> float:
    """Returns a profiler event's self time in microseconds: its kernels' time on CUDA (the
    op's own, not its children's), its CPU time on CPU."""
    if device.type != "cuda":
        return evt.self_cpu_time_total
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return getattr(evt, attr)
    return 0.0


def in_quantizer(evt) -> bool:
    """Returns whether a profiler event runs for an aimet quantizer: it or a caller is the
    quantizer-call range (forward) or an autograd node of aimet's quantize functions
    (backward: QuantDequantFuncBackward and the like)."""
    while evt is not None:
        name = evt.name
        if name == QUANTIZER_RANGE or ("Quant" in name and "Backward" in name):
            return True
        evt = evt.cpu_parent
    return False


def quantizer_ranges(model):
    """Returns the hook handles that wrap every aimet quantizer call of `model` in a profiler
    range named QUANTIZER_RANGE (remove them when done)."""
    from aimet_torch.quantization.base import QuantizerBase

    open_ranges = []

    def enter(mod, inputs):
        rf = torch.profiler.record_function(QUANTIZER_RANGE)
        rf.__enter__()
        open_ranges.append(rf)

    def leave(mod, inputs, output):
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for m in model.modules():
        if isinstance(m, QuantizerBase):
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    return handles


def profile_qat(sim, args, device, batches) -> dict:
    """Profiles PROFILE_STEPS fp32 QAT training steps with torch.profiler; returns {"clock":
    "cuda" or "cpu", "steps", "total_ms": summed self time (ms), "top_ops": the TOP_OPS ops by
    self time [{"name", "self_ms", "share" (of total), "calls"}], "quantize_ms" /
    "quantize_share" / "quantize_ops": self time (ms, fraction) in ops whose name contains
    "quantize" and their names, "quantizer_ms" / "quantizer_share": self time (ms, fraction)
    of every op run for an aimet quantizer (in_quantizer: the aten ops inside its forward and
    backward)}."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sim.model.train()
    opt = optimizer_for(sim.model)
    steps = batches[args.warmup + args.steps:][:PROFILE_STEPS]
    train_step(sim_loss(sim), opt, steps[0], device, bf16=False)  # optimizer state allocated outside the trace
    handles = quantizer_ranges(sim.model)
    try:
        synchronize(device)
        with profile(activities=acts) as prof:
            for ids in steps:
                train_step(sim_loss(sim), opt, ids, device, bf16=False)
            synchronize(device)
    finally:
        for h in handles:
            h.remove()
    events = [(e.key, self_time_us(e, device), e.count) for e in prof.key_averages()]
    events = [e for e in events if e[1] > 0]
    total = sum(t for _, t, _ in events) or 1.0
    quant = [(k, t) for k, t, _ in events if "quantize" in k.lower()]
    quantizer_us = sum(self_time_us(e, device) for e in prof.events() if in_quantizer(e))
    top = sorted(events, key=lambda e: -e[1])[:TOP_OPS]
    return {"clock": "cuda" if device.type == "cuda" else "cpu", "steps": len(steps), "total_ms": total / 1e3,
            "top_ops": [{"name": k, "self_ms": t / 1e3, "share": t / total, "calls": c} for k, t, c in top],
            "quantize_ms": sum(t for _, t in quant) / 1e3, "quantize_share": sum(t for _, t in quant) / total,
            "quantize_ops": sorted(k for k, _ in quant),
            "quantizer_ms": quantizer_us / 1e3, "quantizer_share": quantizer_us / total}


def versions() -> dict:
    """Returns {"python", "torch", "transformers", "aimet-torch"} version strings ("-" when not installed)."""
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("transformers", "aimet-torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def device_name(device) -> str:
    """Returns the device's name: the CUDA card's, or the CPU's processor string."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def header(device, args) -> str:
    """Returns the lines printed above the table: device, versions and the model/step settings."""
    v = versions()
    return "\n".join([
        f"device: {device_name(device)}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"model: GPT-2 shape, layers {args.layers}, width {args.width}, heads {args.heads}, vocab {args.vocab}; "
        f"batch {args.batch_size} x seq {args.seq_len} = {args.batch_size * args.seq_len} tokens/step; "
        f"warm-up {args.warmup}, timed {args.steps} steps",
    ])


def fmt(value, spec: str) -> str:
    """Returns `value` formatted with `spec`, or "-" for None."""
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """Returns the results table: variant, tokens/s, median step ms, peak memory MiB, ratio
    vs fp32 (an error text in place of the numbers for a failed variant)."""
    lines = [f"{'variant':<20} {'tokens/s':>12} {'step ms':>10} {'peak MB':>10} {'vs fp32':>8}"]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['variant']:<20} error: {r['error']}")
            continue
        lines.append(f"{r['variant']:<20} {fmt(r['tokens_per_s'], ',.0f'):>12} {fmt(r['step_ms'], '.1f'):>10} "
                     f"{fmt(r['peak_mem_mb'], ',.0f'):>10} {fmt(r['ratio_vs_fp32'], '.3f'):>8}")
    return "\n".join(lines)


def format_profile(prof: dict) -> str:
    """Returns the profile's lines: the top ops by self time and the share in quantize ops."""
    lines = [f"profile: {prof['steps']} QAT steps, self {prof['clock'].upper()} time {prof['total_ms']:.1f} ms; "
             f"top {len(prof['top_ops'])} ops:",
             f"  {'self ms':>10} {'share':>7} {'calls':>7}  op"]
    for o in prof["top_ops"]:
        lines.append(f"  {o['self_ms']:>10.2f} {o['share']:>7.1%} {o['calls']:>7}  {o['name']}")
    clock = prof["clock"].upper()
    lines.append(f"ops whose name contains 'quantize': {prof['quantize_ms']:.2f} ms = {prof['quantize_share']:.1%} "
                 f"of self {clock} time ({', '.join(prof['quantize_ops']) or 'none'})")
    lines.append(f"all ops run for aimet quantizers (forward and backward): {prof['quantizer_ms']:.2f} ms = "
                 f"{prof['quantizer_share']:.1%} of self {clock} time")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Runs the benchmark; prints the header, the table (and the profile with --profile);
    returns {"device", "versions", "settings", "rows" (see measure/error_row, plus
    ratio_vs_fp32), "qat_info", "profile" (profile_qat's dict or None)}, also written to
    --json PATH when given."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows stay true fp32
        torch.backends.cudnn.allow_tf32 = False
    print(header(device, args), flush=True)
    chosen = [v for v in VARIANTS if v in args.variants.split(",")]
    batches = training_batches(args, device)
    rows = []
    for v in chosen:
        if not v.startswith("qat"):
            with tf32(device, v.endswith("_tf32")):
                rows.append(run_plain(v, args, device, batches, bf16=v == "bf16_autocast"))
    qat_names = [v for v in chosen if v.startswith("qat")]
    sim, qat_info, prof = None, {}, None
    if qat_names:
        qat_rows, sim, qat_info = run_qat(qat_names, args, device, batches)
        rows += qat_rows
    add_ratios(rows)
    if qat_info:
        print("qat sim: " + ", ".join(f"{k} {v}" for k, v in qat_info.items()))
    print(format_table(rows), flush=True)
    if args.profile and sim is not None:
        prof = profile_qat(sim, args, device, batches)
        print(format_profile(prof), flush=True)
    result = {"device": device_name(device), "versions": versions(), "settings": vars(args), "rows": rows,
              "qat_info": qat_info, "profile": prof}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
