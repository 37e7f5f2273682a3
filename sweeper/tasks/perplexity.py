"""WikiText-2 perplexity by the sliding-window method Hugging Face documents for
fixed-length models (https://huggingface.co/docs/transformers/perplexity).

Windows of `context_length` tokens start every `stride` tokens; in each window only the
tokens not scored by an earlier window are scored, each with all the context the window
gives it. Perplexity = exp(total NLL / scored tokens). Windows of equal length are run
in batches; for known transformers causal LMs the LM head and the fp32 cross-entropy run
only on the scored positions, in chunks, so a batch's full-vocabulary logits are never
materialised; other models (wrapped, quantised, traced) go through their own forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from ..config import check_bool, check_choice, check_int
from ..data import load_wikitext
from ..registry import TASKS
# the windows' bookkeeping, shared with the ONNX path (re-exported: callers import it from here)
from .windows import Window, by_length, evaluation_tokens, perplexity_result, perplexity_windows, tokenize_split  # noqa: F401

DTYPES = ("float32", "bfloat16", "float16")


# Causal LMs whose forward is exactly `lm_head(get_decoder()(input_ids).last_hidden_state)`
# (read from their transformers source): for these the LM head can be applied to the scored
# positions alone. Others (logit soft-capping, logit scaling, wrapped or traced models) keep
# the model's own forward.
BODY_HEAD_MODELS = frozenset({"GPT2LMHeadModel", "OPTForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
                              "Qwen2ForCausalLM"})
AUTO = "auto"
CPU_AUTO_BATCH = 8
MAX_AUTO_BATCH = 128  # larger batches only add memory: matmuls are already large


def body_and_head(model):
    """Returns (decoder body, LM head) when the model's forward is known to be body then head,
    else None (then the model's own forward gives the logits)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel) or type(model).__name__ not in BODY_HEAD_MODELS:
        return None
    # hooks on the top-level module would be skipped by calling its parts
    if model._forward_hooks or model._forward_pre_hooks:
        return None
    head = model.get_output_embeddings()
    body = model.get_decoder()
    if head is None or body is None or body is model:
        return None
    return body, head


def _autocast_dtype(device, dtype: str):
    """Returns the torch dtype to autocast to on `device`, or None for plain float32 (asked
    for, or the device has no autocast for that dtype)."""
    import torch

    if dtype == "float32" or not torch.amp.is_autocast_available(device.type):
        return None
    amp = getattr(torch, dtype)
    if device.type == "cuda" and amp is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return None
    try:
        with torch.autocast(device.type, dtype=amp):
            pass
    except (RuntimeError, ValueError):
        return None
    return amp


def _config_int(cfg, names, default: int) -> int:
    for name in names:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


def auto_batch_size(model, device, context_length: int, amp_dtype=None, loss_chunk_tokens: int = 4096) -> int:
    """Returns the number of windows per batch (count) that fits the device: on CUDA estimated
    from free memory, the model's width, heads and parameter count; elsewhere CPU_AUTO_BATCH."""
    import torch

    if device.type != "cuda":
        return CPU_AUTO_BATCH
    cfg = getattr(model, "config", None)
    hidden = _config_int(cfg, ("hidden_size", "n_embd", "d_model"), 4096)
    heads = _config_int(cfg, ("num_attention_heads", "n_head"), 32)
    vocab = _config_int(cfg, ("vocab_size",), 50257)
    elt = 2 if amp_dtype is not None else 4
    n_params = sum(p.numel() for p in model.parameters())
    free, _ = torch.cuda.mem_get_info(device)
    # Inference frees each layer's activations as the next runs, so the peak is about one
    # layer's worth: residual, q/k/v, attention output, the 4x-wide MLP in and out, and fp32
    # layer-norm copies, ~24 widths a token (a generous round-up of the ~14 counted).
    per_token = 24 * hidden * elt + 8 * hidden
    if getattr(cfg, "_attn_implementation", "eager") not in ("sdpa", "flash_attention_2", "flash_attention_3"):
        per_token += 2 * heads * context_length * 4  # eager attention holds fp32 scores and probabilities
    # autocast keeps a low-precision copy of every weight; one loss chunk holds its logits in
    # the compute dtype, in fp32 and as fp32 log-probabilities
    fixed = (n_params * elt if amp_dtype is not None else 0) + loss_chunk_tokens * vocab * (elt + 8)
    budget = 0.6 * free - fixed
    return int(max(1, min(MAX_AUTO_BATCH, budget // (per_token * context_length))))


def _gelu_tanh(x):
    import torch

    return torch.nn.functional.gelu(x, approximate="tanh")


@contextmanager
def _fused_tanh_gelu(model, enabled: bool):
    """While active (and `enabled`), transformers' NewGELUActivation modules ("gelu_new", GPT-2's
    tanh GELU written as six elementwise ops, whose pow autocast runs in fp32) run torch's one
    fused tanh-GELU kernel: the same function up to rounding, several times less memory
    traffic. Used only under autocast, where rounding differs anyway; fp32 runs the model's
    own code. Restores the modules on exit."""
    patched = []
    if enabled:
        try:
            from transformers.activations import NewGELUActivation
        except ImportError:
            NewGELUActivation = None
        gelu = _gelu_tanh
        for mod in model.modules() if NewGELUActivation is not None else ():
            if type(mod) is NewGELUActivation and "forward" not in mod.__dict__:
                mod.forward = gelu
                patched.append(mod)
    try:
        yield len(patched)
    finally:
        for mod in patched:
            del mod.forward


def head_fn(head, amp_dtype):
    """Returns f(hidden rows) -> fp32 logits, the head's output up-cast. Under autocast with a
    plain nn.Linear head whose vocabulary is not a multiple of 64 (GPT-2's 50257), the weight
    is zero-padded to one once per run and the extra columns dropped: an unaligned output
    width sends cuBLAS to slow fallback kernels (the head was ~40% of the run on H100)."""
    import torch
    import torch.nn.functional as F

    def plain(h):
        return head(h).float()

    if amp_dtype is None or type(head) is not torch.nn.Linear or head._forward_hooks or head._forward_pre_hooks:
        return plain
    vocab = head.out_features
    pad = -vocab % 64
    if pad == 0:
        return plain
    w = F.pad(head.weight.detach().to(amp_dtype), (0, 0, 0, pad))
    b = None if head.bias is None else F.pad(head.bias.detach().to(amp_dtype), (0, pad))

    def padded(h):
        return F.linear(h.to(amp_dtype), w, b)[:, :vocab].float()

    return padded


def _scored_flat_index(chunk: list[Window], length: int):
    """Returns a LongTensor of flat positions row*length + p whose outputs are scored
    (`Window.scored` of each row)."""
    import torch

    return torch.cat([torch.arange(row * length + w.scored.start, row * length + w.scored.stop)
                      for row, w in enumerate(chunk)])


def _sum_nll(model, ids, windows, batch_size, device, amp_dtype, check_cancelled, loss_chunk_tokens=4096,
             torch_compile=False):
    """Returns (summed NLL in nats, scored token count, loss path) over `windows` of `ids`.

    Equal-length windows run `batch_size` at a time. On the body+head path the LM head sees
    only the scored positions, `loss_chunk_tokens` at a time, so a whole batch's
    full-vocabulary logits never exist at once; cross-entropy is in fp32 and summed in fp64
    on the device (one host sync at the end)."""
    import torch
    import torch.nn.functional as F

    parts = body_and_head(model)
    if parts is not None:
        body, head = parts
        head_logits = head_fn(head, amp_dtype)
        if torch_compile:
            # kept on the module (outside its submodules and state_dict) so that repeated
            # evaluations of one model reuse the compiled graphs; a plain cycle, freed with it
            if "_sweeper_compiled" not in body.__dict__:
                body.__dict__["_sweeper_compiled"] = torch.compile(body)
            body = body.__dict__["_sweeper_compiled"]
        path = "body+head on scored positions"
    else:
        path = "full logits (model forward)"
    ids_dev = ids.to(device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    # one autocast region for the whole run keeps its cache of low-precision weights
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                enabled=amp_dtype is not None), \
            _fused_tanh_gelu(model, parts is not None and amp_dtype is not None):
        for length, group in by_length(windows).items():
            offsets = torch.arange(length, device=device)
            for i in range(0, len(group), batch_size):
                check_cancelled()
                chunk = group[i : i + batch_size]
                begins = torch.tensor([w.begin for w in chunk]).to(device)
                batch = ids_dev[begins[:, None] + offsets]
                idx = _scored_flat_index(chunk, length).to(device)
                targets = batch.reshape(-1).index_select(0, idx + 1)
                if parts is not None:
                    out = body(input_ids=batch, use_cache=False)
                    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                    hidden = hidden.reshape(-1, hidden.shape[-1])
                    for c in range(0, idx.numel(), loss_chunk_tokens):
                        h = hidden.index_select(0, idx[c : c + loss_chunk_tokens])
                        # under autocast the logits are low-precision, as the model's own forward
                        # gives them (a bf16 GEMM with fp32 output ran ~4x slower on H100)
                        logits = head_logits(h)
                        nll_sum += F.cross_entropy(logits, targets[c : c + loss_chunk_tokens], reduction="sum").double()
                else:
                    out = model(input_ids=batch)
                    logits = out.logits if hasattr(out, "logits") else out[0]
                    logits = logits.reshape(-1, logits.shape[-1]).index_select(0, idx).float()
                    nll_sum += F.cross_entropy(logits, targets, reduction="sum").double()
                scored += idx.numel()
    return nll_sum.item(), scored, path


@dataclass(frozen=True)
class WikiText2PPL:
    """WikiText-2 perplexity (sliding window).

    context_length: window length in tokens (None: the model's maximum positions).
    stride: tokens between window starts (None: context_length // 2).
    batch_size: windows per forward pass, or "auto": as many as fit the device (CUDA: from
    free memory and the model's shape; CPU: 8); the number used is reported.
    max_tokens: evaluate only the first N tokens of the split (None: all); reported.
    dtype: "float32" (default; exact, for reproducing published numbers) or "bfloat16" /
    "float16" autocast where the device supports it (else float32; the dtype used is reported
    as compute_dtype). Cross-entropy is always in fp32.
    loss_chunk_tokens: the LM head and cross-entropy run on at most this many scored positions
    at a time (bounds the logits' memory to chunk x vocabulary).
    torch_compile: compile the model body with torch.compile (compiles on a model's first
    evaluation and for new batch shapes; measured no faster for GPT-2 small on H100).
    """

    dataset: str = "wikitext-2-raw-v1"
    split: str = "test"
    context_length: int | None = None
    stride: int | None = None
    batch_size: int | str = 8
    max_tokens: int | None = None
    dtype: str = "float32"
    loss_chunk_tokens: int = 4096
    torch_compile: bool = False

    metric = "wikitext2_ppl"
    mode = "min"

    def reported_metrics(self, model_format: str) -> set[str]:
        """Returns the metric keys an evaluation reports for a model of `model_format`
        ("torch", "onnx", ...): the ONNX evaluation adds the graph's size and speed."""
        keys = {"wikitext2_ppl", "wikitext2_nll", "wikitext2_scored_tokens"}
        if model_format == "onnx":
            keys |= {"model_size_mb", "eval_seconds", "tokens_per_s", "latency_ms"}
        return keys

    def __post_init__(self):
        where = "task wikitext2_ppl"
        check_choice(where, "dataset", self.dataset, ("wikitext-2-raw-v1", "wikitext-2-v1"))
        check_choice(where, "split", self.split, ("train", "validation", "test"))
        if self.context_length is not None:
            check_int(where, "context_length", self.context_length, 2, 1 << 20)
        if self.stride is not None:
            check_int(where, "stride", self.stride, 1, self.context_length or 1 << 20)
        if self.batch_size != AUTO:
            if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 4096:
                from ..errors import ConfigError

                raise ConfigError(where, "batch_size", self.batch_size, f"an integer in 1..4096 or {AUTO!r}")
        if self.max_tokens is not None:
            check_int(where, "max_tokens", self.max_tokens, 2, 1 << 40)
        check_choice(where, "dtype", self.dtype, DTYPES)
        check_int(where, "loss_chunk_tokens", self.loss_chunk_tokens, 1, 1 << 24)
        check_bool(where, "torch_compile", self.torch_compile)

    def eval_budget_s(self) -> float:
        """Returns the seconds one evaluation may take before it counts as hung: 120 s plus
        20 ms per token evaluated (the whole split, ~300k tokens, when max_tokens is unset),
        generous for a ~100M-parameter model on one CPU core."""
        return 120.0 + 0.02 * (self.max_tokens or 300_000)

    def check_data(self) -> None:
        """Raises DataNotFoundError now, before Ray starts, if the split can't be found."""
        load_wikitext(self.dataset, self.split)

    def resolved(self, model_max_positions: int) -> tuple[int, int]:
        """Returns (context_length, stride) in tokens for a model with that many positions."""
        ctx = self.context_length or model_max_positions
        if ctx > model_max_positions:
            from ..errors import ConfigError

            raise ConfigError("task wikitext2_ppl", "context_length", ctx, f"at most the model's {model_max_positions} positions")
        return ctx, self.stride or max(1, ctx // 2)


def model_max_positions(model) -> int:
    """Returns the number of positions a transformers causal LM accepts, in tokens."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError("cannot tell the model's maximum sequence length; set context_length")


def wikitext2_perplexity(model, config: WikiText2PPL, ctx) -> dict:
    """Returns {'wikitext2_ppl': perplexity, 'wikitext2_nll': mean NLL in nats/token,
    'wikitext2_scored_tokens': count, 'eval_settings': {...}} for `model` on the split.
    An ONNX model (models.onnx_export.OnnxModel) is evaluated through onnxruntime."""
    import torch

    from ..models.onnx_export import OnnxModel

    if isinstance(model, OnnxModel):
        from .onnx_perplexity import onnx_wikitext2_perplexity

        return onnx_wikitext2_perplexity(model, config, ctx)

    ids, text = evaluation_tokens(config, ctx)
    context_length, stride = config.resolved(model_max_positions(model))
    windows = perplexity_windows(len(ids), context_length, stride)
    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    amp_dtype = _autocast_dtype(device, config.dtype)
    batch_size = config.batch_size
    if batch_size == AUTO:
        batch_size = auto_batch_size(model, device, context_length, amp_dtype, config.loss_chunk_tokens)
    was_training = model.training
    model.eval()
    try:
        nll, scored, path = _sum_nll(model, ids, windows, batch_size, device, amp_dtype, ctx.check_cancelled,
                                     config.loss_chunk_tokens, config.torch_compile)
    finally:
        model.train(was_training)
    return perplexity_result(nll, scored, config, context_length, stride, text.join, {
        "dtype": config.dtype,
        "compute_dtype": str(amp_dtype or torch.float32).removeprefix("torch."),
        "batch_size": batch_size,
        "loss_path": path,
        "loss_chunk_tokens": config.loss_chunk_tokens,
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "unit": "perplexity (exp of mean NLL in nats per scored token)",
    })


TASKS.register("wikitext2_ppl", wikitext2_perplexity)(WikiText2PPL)

