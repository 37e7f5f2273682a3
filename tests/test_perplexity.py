"""The sliding-window perplexity task against an independent plain computation."""
import math

import pytest
import torch

from sweeper.errors import ConfigError
from sweeper.jobs import JobContext
from sweeper.tasks.perplexity import (BODY_HEAD_MODELS, WikiText2PPL, body_and_head, head_fn, perplexity_windows,
                                      tokenize_split, wikitext2_perplexity)


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
    ({"dtype": "int8"}, "dtype"), ({"context_length": 1}, "context_length"), ({"batch_size": "max"}, "batch_size"),
    ({"loss_chunk_tokens": 0}, "loss_chunk_tokens"), ({"torch_compile": 1}, "torch_compile"),
])
def test_bad_task_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"{field}="):
        WikiText2PPL(**kwargs)


def hf_loop_perplexity(model, ids, ctx_len, stride):
    """Hugging Face's documented loop (https://huggingface.co/docs/transformers/perplexity):
    batch 1, labels = inputs with the already-scored prefix set to -100, the model's own
    loss. Returns (perplexity, scored tokens). Each window's mean loss is weighted by the
    labels left after the model's internal shift; the page subtracts the batch size from
    the unmasked labels, one too few for every window whose first label is masked."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx_len, len(ids))
            trg_len = end - prev_end
            input_ids = ids[None, begin:end]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            loss = model(input_ids, labels=target_ids).loss
            n = (target_ids[:, 1:] != -100).sum().item()
            nll_sum += loss.item() * n
            n_tokens += n
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.fixture()
def tiny_opt(tiny_tokenizer):
    """A randomly initialised 2-layer OPT (hidden 32, projected to 16 for the head, 64 positions)."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=len(tiny_tokenizer), max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=16, pad_token_id=None,
                    bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    return OPTForCausalLM(cfg).eval()


class TupleOutput(torch.nn.Module):
    """A wrapped model whose forward returns (logits,), like the aimet QuantSim wrapper."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.config = lm, lm.config

    def forward(self, input_ids):
        return (self.lm(input_ids=input_ids).logits,)


@pytest.fixture(scope="module")
def test_ids(tiny_tokenizer):
    """The WikiText-2 raw test split under the tiny tokenizer, tokenized once for this module."""
    return tokenize_split(tiny_tokenizer, "wikitext-2-raw-v1", "test")


@pytest.fixture()
def cpu_ctx(tiny_tokenizer, test_ids):
    return JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer, cached=lambda key, build: test_ids)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_fp32_matches_hf_documented_loop(request, cpu_ctx, test_ids, arch):
    model = request.getfixturevalue(f"tiny_{arch}")
    out = wikitext2_perplexity(model, WikiText2PPL(context_length=64, stride=24, batch_size=8, max_tokens=1500), cpu_ctx)
    ref, count = hf_loop_perplexity(model, test_ids[0][:1500], 64, 24)
    assert out["eval_settings"]["loss_path"].startswith("body+head")
    assert out["eval_settings"]["compute_dtype"] == "float32"
    assert out["wikitext2_scored_tokens"] == count == 1499
    assert out["wikitext2_ppl"] == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_bf16_within_half_a_percent(request, cpu_ctx, test_ids, arch):
    model = request.getfixturevalue(f"tiny_{arch}")
    out = wikitext2_perplexity(model, WikiText2PPL(context_length=64, stride=32, max_tokens=1500, dtype="bfloat16"), cpu_ctx)
    ref, _ = hf_loop_perplexity(model, test_ids[0][:1500], 64, 32)
    assert out["eval_settings"]["compute_dtype"] == "bfloat16"
    assert out["wikitext2_ppl"] == pytest.approx(ref, rel=5e-3)
    assert out["wikitext2_ppl"] != ref  # autocast did change the arithmetic
    assert not any("forward" in m.__dict__ for m in model.modules())  # the fused GELU is undone


def test_chunked_loss_equals_unchunked(tiny_opt, cpu_ctx):
    res = [wikitext2_perplexity(tiny_opt, WikiText2PPL(context_length=64, stride=32, max_tokens=1500, batch_size=5,
                                                       loss_chunk_tokens=n), cpu_ctx) for n in (97, 1 << 20)]
    assert res[0]["wikitext2_scored_tokens"] == res[1]["wikitext2_scored_tokens"] == 1499
    assert res[0]["wikitext2_nll"] == pytest.approx(res[1]["wikitext2_nll"], rel=1e-6)


def test_wrapped_model_uses_its_own_forward(tiny_gpt2, cpu_ctx):
    cfg = WikiText2PPL(context_length=64, stride=32, max_tokens=1500, batch_size=3)
    wrapped = wikitext2_perplexity(TupleOutput(tiny_gpt2), cfg, cpu_ctx)
    plain = wikitext2_perplexity(tiny_gpt2, cfg, cpu_ctx)
    assert wrapped["eval_settings"]["loss_path"].startswith("full logits")
    assert wrapped["wikitext2_ppl"] == pytest.approx(plain["wikitext2_ppl"], rel=1e-5)


def test_forward_hook_keeps_the_model_forward(tiny_gpt2):
    assert body_and_head(tiny_gpt2) is not None
    tiny_gpt2.register_forward_hook(lambda m, i, o: o)
    assert body_and_head(tiny_gpt2) is None


def test_auto_batch_size_is_reported(tiny_gpt2, cpu_ctx):
    out = wikitext2_perplexity(tiny_gpt2, WikiText2PPL(batch_size="auto", max_tokens=500), cpu_ctx)
    assert out["eval_settings"]["batch_size"] == 8


def _tiny_causal_lm(name):
    import transformers

    torch.manual_seed(0)
    if name == "GPT2LMHeadModel":
        cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    elif name == "OPTForCausalLM":
        cfg = transformers.OPTConfig(vocab_size=97, max_position_embeddings=32, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=16, pad_token_id=None,
                                     bos_token_id=None, eos_token_id=None)
    else:
        cfg = getattr(transformers, name.replace("ForCausalLM", "Config"))(
            vocab_size=97, max_position_embeddings=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return getattr(transformers, name)(cfg).eval()


@pytest.mark.parametrize("name", sorted(BODY_HEAD_MODELS))
def test_body_then_head_is_the_model_forward(name):
    """Every model on the body+head list gives its own logits from head(body(x))."""
    model = _tiny_causal_lm(name)
    body, head = body_and_head(model)
    x = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        ours = head(body(input_ids=x, use_cache=False).last_hidden_state)
        assert torch.allclose(ours, model(input_ids=x).logits, rtol=0, atol=1e-6)


def test_padded_head_gives_the_heads_logits():
    """Under autocast a head of unaligned vocabulary runs zero-padded; the logits are the same."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 97, bias=False)
    h = torch.randn(10, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, plain = head_fn(head, torch.bfloat16)(h), head(h).float()
    assert ours.shape == plain.shape == (10, 97) and ours.dtype == torch.float32
    assert torch.allclose(ours, plain, rtol=1e-2, atol=1e-2)
