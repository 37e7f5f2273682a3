"""The sliding-window perplexity task against an independent plain computation."""
import math

import pytest
import torch

from sweeper.errors import ConfigError
from sweeper.jobs import JobContext
from sweeper.tasks.perplexity import WikiText2PPL, perplexity_windows, tokenize_split, wikitext2_perplexity


@pytest.mark.parametrize("n,ctx,stride", [(1000, 64, 32), (1000, 64, 64), (1001, 64, 17), (50, 64, 32), (64, 64, 32)])
def test_windows_score_each_token_once_with_context(n, ctx, stride):
    scored = []
    for w in perplexity_windows(n, ctx, stride):
        assert w.end - w.begin <= ctx and w.begin < w.score_from <= w.end
        scored.extend(range(w.score_from, w.end))
    # A token is left out only when it opens a window and no earlier window covered it
    # (stride == context: non-overlapping windows, as in Hugging Face's loop).
    skipped = set(range(0, n, stride)) if stride == ctx else {0}
    assert scored == [t for t in range(n) if t not in skipped]


def _plain_perplexity(model, ids, ctx_len, stride):
    """Independent: one window at a time, float64 log-softmax, NLL summed token by token."""
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx_len, len(ids))
            window = ids[begin:end]
            logp = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            for pos in range(max(prev_end, begin + 1), end):
                nll -= logp[pos - begin - 1, window[pos - begin]].item()
                count += 1
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll / count), count


@pytest.mark.parametrize("stride,batch", [(32, 8), (64, 3), (24, 1)])
def test_task_matches_independent_computation(tiny_gpt2, tiny_tokenizer, stride, batch):
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer)
    cfg = WikiText2PPL(context_length=64, stride=stride, batch_size=batch, max_tokens=3000)
    out = wikitext2_perplexity(tiny_gpt2, cfg, ctx)
    ids, _ = tokenize_split(tiny_tokenizer, "wikitext-2-raw-v1", "test")
    ref, count = _plain_perplexity(tiny_gpt2, ids[:3000], 64, stride)
    assert out["wikitext2_scored_tokens"] == count == (2999 if stride < 64 else 3000 - len(range(0, 3000, 64)))
    assert out["wikitext2_ppl"] == pytest.approx(ref, rel=1e-4)
    # a random model over a 512-token vocabulary is near-uniform: ppl close to 512
    assert 300 < out["wikitext2_ppl"] < 900
    s = out["eval_settings"]
    assert (s["context_length"], s["stride"], s["split"], s["max_tokens"]) == (64, stride, "test", 3000)


def test_task_defaults_to_model_positions_and_half_stride(tiny_gpt2, tiny_tokenizer):
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer)
    out = wikitext2_perplexity(tiny_gpt2, WikiText2PPL(max_tokens=500), ctx)
    assert (out["eval_settings"]["context_length"], out["eval_settings"]["stride"]) == (64, 32)


def test_context_longer_than_model_is_refused(tiny_gpt2, tiny_tokenizer):
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer)
    with pytest.raises(ConfigError, match="context_length=128"):
        wikitext2_perplexity(tiny_gpt2, WikiText2PPL(context_length=128, max_tokens=500), ctx)


@pytest.mark.parametrize("kwargs,field", [
    ({"split": "dev"}, "split"), ({"stride": 0}, "stride"), ({"batch_size": 0}, "batch_size"),
    ({"dtype": "int8"}, "dtype"), ({"context_length": 1}, "context_length"),
])
def test_bad_task_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"{field}="):
        WikiText2PPL(**kwargs)
