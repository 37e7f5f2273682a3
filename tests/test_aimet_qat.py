"""The aimet_qat recipe (aimet-torch QuantSim W8A8 QAT) on a tiny GPT-2 and real WikiText-2."""
import dataclasses
import json
import math

import pytest
import torch

from sweeper.errors import ConfigError
from sweeper.jobs import JobContext
from sweeper.recipes import quantize
from sweeper.recipes.aimet_qat import AimetQATConfig
from sweeper.registry import RECIPES
from sweeper.tasks.perplexity import WikiText2PPL, wikitext2_perplexity

# ../shared/data has the raw test split and the tokenized validation split: evaluate on
# the former, calibrate/train on the latter.
EVAL = WikiText2PPL(dataset="wikitext-2-raw-v1", split="test", max_tokens=2000, context_length=64)


def make_ctx(tokenizer, reports, logs):
    from sweeper.data import TextSplit, load_wikitext

    val = load_wikitext("wikitext-2-v1", "validation")
    train = TextSplit(val.dataset, val.split, val.text[:40_000], val.source, val.join)
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tokenizer, train_text=train,
                     report=lambda metrics, artifacts=None: reports.append({**metrics, "_artifacts": sorted(artifacts or {})}),
                     log=logs.append)
    ctx.evaluate = lambda m: wikitext2_perplexity(m, EVAL, ctx)
    return ctx


def test_registered():
    assert RECIPES.get("aimet_qat").config_cls is AimetQATConfig


@pytest.mark.parametrize("field,value", [("param_bw", 3), ("quant_scheme", "bogus"), ("output_bw", 32),
                                         ("lr", 0.0), ("clamp_value", -1.0), ("seq_len", 4), ("percentile", 10.0),
                                         ("per_channel", 1), ("epochs", 101), ("calibration_batches", 0)])
def test_bad_config(field, value):
    with pytest.raises(ConfigError) as e:
        AimetQATConfig(**{field: value})
    msg = str(e.value)
    assert field in msg and "\n" not in msg and repr(value) in msg


def test_qat_w8a8(tiny_gpt2, tiny_tokenizer):
    from aimet_torch.nn import BaseQuantizationMixin
    from transformers.pytorch_utils import Conv1D

    reports, logs = [], []
    ctx = make_ctx(tiny_tokenizer, reports, logs)
    fp_c_attn = tiny_gpt2.transformer.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (in, out)
    cfg = AimetQATConfig(epochs=1, lr=1e-3, batch_size=8, steps_per_epoch=15, calibration_batches=2)
    q = quantize(tiny_gpt2, cfg, ctx)

    # the caller's model is untouched
    assert isinstance(tiny_gpt2.transformer.h[0].attn.c_attn, Conv1D)
    torch.testing.assert_close(tiny_gpt2.transformer.h[0].attn.c_attn.weight, fp_c_attn, atol=0, rtol=0)

    sim_model = q.model
    linears = [m for m in sim_model.modules() if isinstance(m, BaseQuantizationMixin) and isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * 2 + 1  # 4 per block + lm_head
    for lin in linears:
        wq = lin.param_quantizers["weight"]
        assert wq is not None and wq.symmetric and wq.bitwidth == 8 and wq.is_initialized()
        assert lin.param_quantizers["bias"] is None if "bias" in lin.param_quantizers else lin.bias is None
        out_q = lin.output_quantizers[0]
        assert out_q is not None and not out_q.symmetric and out_q.bitwidth == 8
    # model input: token ids are never quantized (the embedding has no input quantizer);
    # the first float activation (token + position embeddings) is.
    tr = sim_model.lm.transformer
    assert len(tr.wte.input_quantizers) == 0
    assert tr.wte.param_quantizers["weight"].symmetric
    first_act = tr.drop.input_quantizers[0]
    assert first_act is not None and first_act.is_initialized() and not first_act.symmetric

    assert [r["epoch"] for r in reports] == [0, 1]
    # every report carries its encodings and its deployed graph, evaluated (a scheduler may
    # stop the trial after any of them; tests/test_aimet_deploy.py checks the graph)
    assert [r["_artifacts"] for r in reports] == [["deploy_gap_by_op.json", "encodings.json", "model.onnx"]] * 2
    assert all(abs(r["sim_deploy_gap_pct"]) < 0.5 and math.isfinite(r["deploy_wikitext2_ppl"]) for r in reports)
    for r in reports:
        assert math.isfinite(r["wikitext2_ppl"]) and 1 < r["wikitext2_ppl"] < 10 * len(tiny_tokenizer)
        assert r["eval_settings"]["context_length"] == 64
    assert math.isfinite(reports[1]["train_loss"]) and reports[1]["train_loss"] > 0
    assert q.reported and q.info["conv1d_converted"] == 8 and q.info["steps_per_epoch"] == 15

    # training changed the weights (sim Linear weight is the transposed Conv1D weight)
    assert not torch.allclose(tr.h[0].attn.c_attn.weight.detach(), fp_c_attn.t(), atol=1e-6)

    enc = json.loads(q.artifacts["encodings.json"])
    assert enc["version"] == "1.0.0"
    params = {e["name"]: e for e in enc["param_encodings"]}
    acts = {e["name"]: e for e in enc["activation_encodings"]}
    # embedding outputs (Gather) carry the embedding table's symmetric encoding; every
    # other activation is asymmetric 8-bit, starting with the embeddings' sum (model input)
    computed = {n: a for n, a in acts.items() if not n.endswith("Gather_output_0")}
    assert len(computed) > 20 and all(not a["is_sym"] and a["bw"] == 8 for a in computed.values())
    assert "/lm/transformer/Add_output_0" in computed
    c_attn = [e for n, e in params.items() if n.startswith("lm.transformer.h.0.attn.c_attn.weight")]
    assert len(c_attn) == 1 and c_attn[0]["is_sym"] and c_attn[0]["bw"] == 8
    assert sum(n.startswith("lm.transformer.h.") and ".weight" in n and ("c_" in n) for n in params) == 8
    assert not any("bias" in name for name in params)
    assert len(logs) == 4  # epoch 0, epoch 1, the deployed graph after each


def test_clamped_init_and_fixed_ranges(tiny_gpt2, tiny_tokenizer):
    reports, logs = [], []
    ctx = make_ctx(tiny_tokenizer, reports, logs)
    cfg = AimetQATConfig(quant_scheme="tf", clamp_value=0.5, epochs=0, output_bw=16, calibration_batches=1, batch_size=4)
    q = quantize(tiny_gpt2, cfg, ctx)
    from sweeper.recipes.aimet_qat import activation_quantizers

    acts = list(activation_quantizers(q.model))
    assert acts and q.info["activation_ranges_clamped"] > 0
    for _, a in acts:
        assert a.bitwidth == 16
        step = a.get_scale().item()  # get_min/get_max are snapped to the integer grid
        assert a.get_min().item() >= -0.5 - step and a.get_max().item() <= 0.5 + step
        assert not any(p.requires_grad for p in a.parameters())  # "tf": ranges fixed
    assert [r["epoch"] for r in reports] == [0]
    assert dataclasses.asdict(cfg)["clamp_value"] == 0.5


def test_per_module_widths_in_the_exported_encodings(tiny_gpt2, tiny_tokenizer):
    """Mixed precision in aimet: the exported encodings (what a user deploys) hold each
    layer's weight at the width its config gave it; a float layer has no encodings; a
    one-layer probe leaves only that layer's."""
    reports, logs = [], []
    ctx = make_ctx(tiny_tokenizer, reports, logs)
    base = dict(epochs=0, batch_size=8, calibration_batches=1, seq_len=64, param_bw=4, deploy_check="off")
    listed = quantize(tiny_gpt2, AimetQATConfig(**base), ctx)
    layers = listed.info["layers"]
    assert "lm.transformer.h.0.attn.c_attn" in layers and len(layers) == len(set(layers))

    def param_bw(q) -> dict[str, int]:
        enc = json.loads(q.artifacts["encodings.json"])
        return {e["name"].split(".weight")[0]: e["bw"] for e in enc["param_encodings"] if ".weight" in e["name"]}

    # the export names a weight after its module ("...c_attn.weight_0"); LayerNorm weights
    # of equal values share one initializer and lm_head shares wte's, so check the Linears
    linear = [n for n in layers if n.rsplit(".", 1)[1] in ("c_attn", "c_proj", "c_fc")]
    assert len(linear) == 8 and all(param_bw(listed)[n] == 4 for n in linear)
    ranking = tuple(reversed(linear)) + tuple(n for n in layers if n not in linear)
    mixed = quantize(tiny_gpt2, AimetQATConfig(**base, sensitivity_ranking=ranking, protected_layers=2, protected_bits=8,
                                               float_layers=[linear[0]]), ctx)
    widths = param_bw(mixed)
    assert [widths[n] for n in ranking[:2]] == [8, 8]  # the two most sensitive at 8 bits
    assert linear[0] not in widths  # in float: no weight encoding
    assert all(widths[n] == 4 for n in linear[1:-2])
    assert mixed.info["layer_bits"] == {**{n: 4 for n in layers if n != linear[0]}, ranking[0]: 8, ranking[1]: 8}

    alone = quantize(tiny_gpt2, AimetQATConfig(**base, layers=[linear[1]]), ctx)
    assert param_bw(alone) == {linear[1]: 4}
    acts = [len(json.loads(q.artifacts["encodings.json"])["activation_encodings"]) for q in (alone, listed)]
    assert 0 < acts[0] < acts[1]  # that layer's activations only
    for bad, word in (({"protected_layers": 3, "sensitivity_ranking": ["a", "b"]}, "at most the 2"),
                      ({"protected_bits": 4}, "more than the trial's 4 bits"), ({"layers": "x"}, "list of layer names")):
        with pytest.raises(ConfigError, match=word):
            AimetQATConfig(**{**base, **bad})
    with pytest.raises(ConfigError, match="a layer of the model"):
        quantize(tiny_gpt2, AimetQATConfig(**base, float_layers=["no.such.layer"]), ctx)
