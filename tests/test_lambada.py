"""LAMBADA task: the batched, padded evaluation against an independent plain loop (one
passage at a time, no padding) on a tiny model and the real LAMBADA test set."""
import math

import pytest

N = 40  # passages: enough lengths to exercise padding and batching


def _ctx(tokenizer):
    import torch

    from sweeper.jobs import JobContext

    cache = {}
    return JobContext(device=torch.device("cpu"), tokenizer=tokenizer,
                      cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))


def _plain_loop(model, tokenizer, texts, max_positions):
    """(correct flags, target NLLs) one passage at a time: context and ' ' + last word
    tokenized separately, greedy check of every target token, NLL summed over them."""
    import torch

    flags, nlls = [], []
    for text in texts:
        context, word = text.rsplit(" ", 1)
        c = tokenizer(context)["input_ids"]
        t = tokenizer(" " + word)["input_ids"]
        ids = (c + t)[-(max_positions + 1):][:-1]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        n = len(ids)
        pos = range(n - len(t), n)
        flags.append(all(int(logp[p].argmax()) == tok for p, tok in zip(pos, t)))
        nlls.append(-sum(float(logp[p, tok]) for p, tok in zip(pos, t)))
    return flags, nlls


def test_lambada_matches_plain_loop(tiny_gpt2, tiny_tokenizer, data_dir):
    from sweeper.data.lambada import load_lambada
    from sweeper.tasks.lambada import LambadaTask, lambada

    texts = load_lambada().texts[:N]
    task = LambadaTask(objective="lambada_ppl", max_samples=N, batch_size=7, timing_batch_size=4, warmup_runs=1,
                       timed_runs=3)
    got = lambada(tiny_gpt2, task, _ctx(tiny_tokenizer))
    flags, nlls = _plain_loop(tiny_gpt2, tiny_tokenizer, texts, 64)
    assert got["lambada_samples"] == N
    assert got["lambada_acc"] == pytest.approx(100.0 * sum(flags) / N)
    assert got["lambada_ppl"] == pytest.approx(math.exp(sum(nlls) / N), rel=1e-5)
    assert got["eval_settings"]["source"].endswith("lambada_test.jsonl")
    for key in ("latency_ms", "samples_per_s", "latency_ms_b4", "samples_per_s_b4"):
        assert got[key] > 0
    # batch-4 throughput is 4 passages per median forward time
    assert got["samples_per_s_b4"] == pytest.approx(4000.0 / got["latency_ms_b4"], rel=1e-2)


def test_greedy_needs_every_target_token(tiny_gpt2):
    """A target equal to the model's own greedy tokens counts; changing its last token
    (the first ones still right) does not."""
    import numpy as np
    import torch

    from sweeper.tasks.lambada import Sample, padded_batch, score_batch

    context = list(range(5, 25))
    ids = list(context)
    with torch.no_grad():  # the model's greedy continuation of 3 tokens
        for _ in range(3):
            ids.append(int(tiny_gpt2(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = tuple(ids[len(context):])
    wrong_last = greedy[:2] + ((greedy[2] + 1) % 512,)
    samples = [Sample(tuple(context), greedy), Sample(tuple(context), wrong_last), Sample(tuple(context[:7]), greedy[:1])]
    batch, lengths = padded_batch(samples, pad_id=0)
    assert batch.shape == (3, 22) and lengths == [22, 22, 7] and (batch[2, 7:] == 0).all()
    with torch.no_grad():
        logits = tiny_gpt2(input_ids=torch.from_numpy(batch)).logits
    (ok1, nll1), (ok2, nll2), _ = score_batch(logits, samples, lengths)
    assert ok1 and not ok2
    assert nll2 > nll1 and np.isfinite(nll1)


def test_lambada_config_is_checked():
    from sweeper.errors import ConfigError
    from sweeper.tasks.lambada import LambadaTask

    with pytest.raises(ConfigError, match="objective"):
        LambadaTask(objective="accuracy")
    with pytest.raises(ConfigError, match="max_samples"):
        LambadaTask(max_samples=0)
    assert (LambadaTask().metric, LambadaTask().mode) == ("lambada_acc", "max")
    assert (LambadaTask(objective="lambada_ppl").metric, LambadaTask(objective="lambada_ppl").mode) == ("lambada_ppl", "min")


def test_missing_lambada_is_one_line(tmp_path, monkeypatch):
    from sweeper.data.lambada import load_lambada
    from sweeper.errors import DataNotFoundError

    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        load_lambada()
    assert "\n" not in str(err.value) and "lambada_test.jsonl" in str(err.value)
