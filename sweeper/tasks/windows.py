"""The sliding-window bookkeeping both WikiText-2 perplexity tasks share (torch in
`perplexity.py`, onnxruntime in `onnx_perplexity.py`): the evaluation tokens and their
worker-cache key, the windows, their grouping into equal-length batches, the positions
each window scores, and the result's shape. One place, so the two paths score exactly
the same tokens and agree on the same model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..data import load_wikitext


@dataclass(frozen=True)
class Window:
    """One evaluation window: tokens [begin, end) are fed, tokens [score_from, end) scored."""

    begin: int
    end: int
    score_from: int

    @property
    def scored(self) -> slice:
        """Returns the window's positions (0 = its first token) whose outputs are scored:
        position p predicts token p + 1, so [score_from - begin - 1, end - begin - 1)."""
        return slice(self.score_from - self.begin - 1, self.end - self.begin - 1)


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


def by_length(windows: list[Window]) -> dict[int, list[Window]]:
    """Returns the windows grouped by length in tokens (in order of first appearance), so
    each group can run in batches of equal-length rows."""
    groups: dict[int, list[Window]] = {}
    for w in windows:
        groups.setdefault(w.end - w.begin, []).append(w)
    return groups


def tokenize_split(tokenizer, dataset: str, split: str):
    """Returns (1-D LongTensor of token ids, TextSplit) for a WikiText-2 split."""
    import torch

    text = load_wikitext(dataset, split)
    ids = tokenizer(text.text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), text


def evaluation_tokens(config, ctx):
    """Returns (token ids, TextSplit) the task `config` evaluates: its split tokenized by the
    job's tokenizer, kept in the worker's cache across jobs (one entry per tokenizer and
    split), cut to config.max_tokens."""
    tok = ctx.tokenizer
    key = ("wikitext2-tokens", getattr(tok, "name_or_path", id(tok)), len(tok), config.dataset, config.split)
    ids, text = ctx.cached(key, lambda: tokenize_split(tok, config.dataset, config.split))
    return (ids[: config.max_tokens] if config.max_tokens is not None else ids), text


def perplexity(mean_nll: float) -> float:
    """Returns exp(mean_nll); inf past float range (a diverged model), NaN for a NaN loss."""
    if math.isnan(mean_nll):
        return float("nan")
    return math.exp(mean_nll) if mean_nll < 709.0 else float("inf")


def perplexity_result(nll_sum: float, scored: int, config, context_length: int, stride: int,
                      join: str, settings: dict) -> dict:
    """Returns the task's result: wikitext2_ppl, wikitext2_nll (mean nats per scored token),
    wikitext2_scored_tokens and eval_settings (the windows' settings plus `settings`)."""
    mean_nll = nll_sum / scored
    return {
        "wikitext2_ppl": perplexity(mean_nll),
        "wikitext2_nll": mean_nll,
        "wikitext2_scored_tokens": scored,
        "eval_settings": {"dataset": config.dataset, "split": config.split, "context_length": context_length,
                          "stride": stride, "max_tokens": config.max_tokens, "join": join, **settings},
    }
