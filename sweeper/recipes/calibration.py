"""Calibration and training token blocks cut from the job's training text (never the test
split), cached on the worker so a sweep tokenizes once per worker."""
from __future__ import annotations

import hashlib


def token_blocks(ctx, seq_len: int, where: str = "recipe"):
    """Returns a LongTensor (n_blocks, seq_len) of consecutive non-overlapping token blocks
    of ctx.train_text; raises ValueError naming `where` when there is no such text."""
    import torch

    text = ctx.train_text
    if text is None:
        raise ValueError(f"{where}: the job has no training text (ctx.train_text is None)")
    sha = getattr(text, "sha256", None) or hashlib.sha256(text.text.encode("utf-8")).hexdigest()
    tok = ctx.tokenizer
    key = ("token-blocks", getattr(tok, "name_or_path", id(tok)), len(tok), sha, seq_len)

    def build():
        ids = tok(text.text, return_attention_mask=False, verbose=False)["input_ids"]
        n = len(ids) // seq_len
        return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)

    blocks = ctx.cached(key, build)
    if len(blocks) == 0:
        raise ValueError(f"{where}: training text has fewer than seq_len={seq_len} tokens")
    return blocks


def pick_blocks(blocks, n: int, seed: int):
    """Returns `n` rows of `blocks` chosen without replacement by a seeded permutation
    (all rows, in permuted order, when there are fewer than n)."""
    import torch

    perm = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[perm[: min(n, len(blocks))]]
