"""WikiText-2 perplexity by the sliding-window method Hugging Face documents for
fixed-length models (https://huggingface.co/docs/transformers/perplexity).

Windows of `context_length` tokens start every `stride` tokens; in each window only the
tokens not scored by an earlier window are scored, each with all the context the window
gives it. Perplexity = exp(total NLL / scored tokens). Windows of equal length are run
in batches; the loss is taken only on the scored positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import check_choice, check_int
from ..data import load_wikitext
from ..registry import TASKS

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Window:
    """One evaluation window: tokens [begin, end) are fed, tokens [score_from, end) scored."""

    begin: int
    end: int
    score_from: int


def perplexity_windows(n_tokens: int, context_length: int, stride: int) -> list[Window]:
    """Returns the sliding windows over a sequence of `n_tokens` tokens. Every token but the
    first is scored exactly once (the first has no context to be predicted from)."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        score_from = max(prev_end, begin + 1)
        if end > score_from:
            windows.append(Window(begin, end, score_from))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _sum_nll(model, ids, windows, batch_size, device, dtype, check_cancelled):
    import torch

    nll_sum, scored = 0.0, 0
    by_len: dict[int, list[Window]] = {}
    for w in windows:
        by_len.setdefault(w.end - w.begin, []).append(w)
    autocast = dtype != "float32" and device.type in ("cuda", "cpu")
    amp_dtype = getattr(torch, dtype)
    with torch.inference_mode():
        for length, group in by_len.items():
            for i in range(0, len(group), batch_size):
                check_cancelled()
                chunk = group[i : i + batch_size]
                batch = torch.stack([ids[w.begin : w.end] for w in chunk]).to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                    out = model(input_ids=batch)
                logits = out.logits if hasattr(out, "logits") else out[0]
                for row, w in enumerate(chunk):
                    # position p predicts token p+1; score tokens [score_from, end)
                    first = w.score_from - w.begin - 1
                    lg = logits[row, first : length - 1].float()
                    tgt = batch[row, first + 1 : length]
                    nll_sum += torch.nn.functional.cross_entropy(lg, tgt, reduction="sum").item()
                    scored += tgt.numel()
    return nll_sum, scored


@dataclass(frozen=True)
class WikiText2PPL:
    """WikiText-2 perplexity (sliding window).

    context_length: window length in tokens (None: the model's maximum positions).
    stride: tokens between window starts (None: context_length // 2).
    max_tokens: evaluate only the first N tokens of the split (None: all); reported.
    """

    dataset: str = "wikitext-2-raw-v1"
    split: str = "test"
    context_length: int | None = None
    stride: int | None = None
    batch_size: int = 8
    max_tokens: int | None = None
    dtype: str = "float32"

    metric = "wikitext2_ppl"
    mode = "min"

    def __post_init__(self):
        where = "task wikitext2_ppl"
        check_choice(where, "dataset", self.dataset, ("wikitext-2-raw-v1", "wikitext-2-v1"))
        check_choice(where, "split", self.split, ("train", "validation", "test"))
        if self.context_length is not None:
            check_int(where, "context_length", self.context_length, 2, 1 << 20)
        if self.stride is not None:
            check_int(where, "stride", self.stride, 1, self.context_length or 1 << 20)
        check_int(where, "batch_size", self.batch_size, 1, 4096)
        if self.max_tokens is not None:
            check_int(where, "max_tokens", self.max_tokens, 2, 1 << 40)
        check_choice(where, "dtype", self.dtype, DTYPES)

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


def tokenize_split(tokenizer, dataset: str, split: str):
    """Returns (1-D LongTensor of token ids, TextSplit) for a WikiText-2 split."""
    import torch

    text = load_wikitext(dataset, split)
    ids = tokenizer(text.text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), text


def _perplexity(mean_nll: float) -> float:
    """Returns exp(mean_nll); inf past float range (a diverged model), NaN for a NaN loss."""
    if math.isnan(mean_nll):
        return float("nan")
    return math.exp(mean_nll) if mean_nll < 709.0 else float("inf")


def wikitext2_perplexity(model, config: WikiText2PPL, ctx) -> dict:
    """Returns {'wikitext2_ppl': perplexity, 'wikitext2_nll': mean NLL in nats/token,
    'wikitext2_scored_tokens': count, 'eval_settings': {...}} for `model` on the split."""
    import torch

    key = ("wikitext2-tokens", getattr(ctx.tokenizer, "name_or_path", id(ctx.tokenizer)), len(ctx.tokenizer), config.dataset, config.split)
    ids, text = ctx.cached(key, lambda: tokenize_split(ctx.tokenizer, config.dataset, config.split))
    if config.max_tokens is not None:
        ids = ids[: config.max_tokens]
    context_length, stride = config.resolved(model_max_positions(model))
    windows = perplexity_windows(len(ids), context_length, stride)
    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    was_training = model.training
    model.eval()
    try:
        nll, scored = _sum_nll(model, ids, windows, config.batch_size, device, config.dtype, ctx.check_cancelled)
    finally:
        model.train(was_training)
    mean_nll = nll / scored
    return {
        "wikitext2_ppl": _perplexity(mean_nll),
        "wikitext2_nll": mean_nll,
        "wikitext2_scored_tokens": scored,
        "eval_settings": {
            "dataset": config.dataset,
            "split": config.split,
            "context_length": context_length,
            "stride": stride,
            "max_tokens": config.max_tokens,
            "dtype": config.dtype,
            "join": text.join,
            "unit": "perplexity (exp of mean NLL in nats per scored token)",
        },
    }


TASKS.register("wikitext2_ppl", wikitext2_perplexity)(WikiText2PPL)

