"""ONNX export, ONNX perplexity and the onnx_ptq recipes on a small trained OPT model and
real WikiText-2 (calibration on the validation split, evaluation on the test split)."""
import numpy as np
import onnx
import pytest
import torch

from sweeper.errors import ConfigError
from sweeper.jobs import JobContext
from sweeper.models.onnx_export import OnnxModel, export_causal_lm
from sweeper.recipes.onnx_ptq import OnnxPTQConfig, quantize_onnx
from sweeper.tasks.onnx_perplexity import onnx_wikitext2_perplexity
from sweeper.tasks.perplexity import WikiText2PPL, wikitext2_perplexity

EVAL = WikiText2PPL(split="test", max_tokens=16_384, context_length=128, stride=128, batch_size=8)


@pytest.fixture(scope="module")
def opt_small(opt_small_dir):
    """(model, tokenizer) of the small trained OPT reference model."""
    from sweeper.models.loading import load_model

    loaded = load_model(str(opt_small_dir))
    return loaded.model.eval(), loaded.tokenizer


@pytest.fixture(scope="module")
def ctx(opt_small, tmp_path_factory):
    from sweeper.data import load_wikitext

    cache = {}
    return JobContext(device=torch.device("cpu"), tokenizer=opt_small[1], train_text=load_wikitext("wikitext-2-v1", "validation"),
                      cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()),
                      workdir=tmp_path_factory.mktemp("work"), log=lambda msg: None)


@pytest.fixture(scope="module")
def exported(opt_small, tmp_path_factory) -> OnnxModel:
    return export_causal_lm(opt_small[0], tmp_path_factory.mktemp("export") / "fp32", log=lambda m: None)


@pytest.fixture(scope="module")
def fp32_ppl(exported, ctx) -> float:
    return onnx_wikitext2_perplexity(exported, EVAL, ctx)["wikitext2_ppl"]


@pytest.mark.parametrize("kw,word", [
    ({"algorithm": "fp32", "bits": 4}, "algorithm=fp32 bits=4"),
    ({"algorithm": "int8_qdq", "bits": 4}, "int8_qdq bits=4"),
    ({"algorithm": "int8_qdq", "block_size": 32}, "block_size unset"),
    ({"algorithm": "hqq", "bits": 8, "block_size": 32}, "hqq bits=8"),
    ({"algorithm": "gptq", "bits": 8, "block_size": 64}, "block_size unset"),
    ({"algorithm": "gptq", "bits": 4, "block_size": 64, "weight_format": "qdq"}, "weight_format matmulnbits for gptq 4-bit"),
    ({"algorithm": "gptq", "bits": 8, "symmetric": False}, "QDQ weights are symmetric"),
    ({"algorithm": "hqq", "bits": 2, "block_size": 32}, "hqq bits=2"),
    ({"algorithm": "rtn", "bits": 4}, "a block_size"),
    ({"algorithm": "rtn", "bits": 4, "block_size": 48}, "block_size=48"),
    ({"algorithm": "rtn", "bits": 3, "block_size": 32}, "bits=3"),
    ({"algorithm": "hqq", "bits": 4, "block_size": 32, "symmetric": True}, "HQQ is asymmetric"),
    ({"algorithm": "awq"}, "algorithm='awq'"),
])
def test_unsupported_combination_is_refused(kw, word):
    with pytest.raises(ConfigError) as err:
        OnnxPTQConfig(**kw)
    assert word in str(err.value) and "\n" not in str(err.value)


def test_export_cache_exports_once_per_machine(tmp_path, monkeypatch):
    """Workers (and later sweeps) of one machine share one export of the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sweeper.models.onnx_export import export_cached

    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    logs = []
    first = export_cached(model, "k" * 64, log=logs.append)
    second = export_cached(model, "k" * 64, log=logs.append)
    assert [line.split(" ")[1] for line in logs] == ["exported", "export"]  # exported once, then from the cache
    assert "from this machine's cache" in logs[1] and second.path == first.path and second.path.is_file()
    assert sorted(f.name for f in first.folder.iterdir()) == ["model.onnx"]  # the graph's folder holds only it
    assert second.info["export_max_abs_logit_diff"] == first.info["export_max_abs_logit_diff"] < 1e-4
    assert (second.max_positions, second.vocab_size, second.source_key) == (64, 300, "k" * 64)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_export_matches_torch_at_other_shapes(family, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    else:
        model = OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                                         max_position_embeddings=64, word_embed_proj_dim=32)).eval()
    onnx_model = export_causal_lm(model, tmp_path / "m", log=lambda m: None)
    assert onnx_model.info["export_max_abs_logit_diff"] < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_model.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1), (3, 37), (2, 64)]:  # dynamic batch and sequence, none of them the traced one
        ids = torch.randint(0, 300, shape)
        got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
        with torch.no_grad():
            want = model(input_ids=ids).logits.numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_onnx_and_torch_perplexity_agree(opt_small, exported, ctx, fp32_ppl):
    torch_ppl = wikitext2_perplexity(opt_small[0], EVAL, ctx)["wikitext2_ppl"]
    assert abs(fp32_ppl - torch_ppl) / torch_ppl < 1e-3
    assert 10 < fp32_ppl < 2000  # a trained model, far from uniform over 4096 tokens


def _weight_matmuls(model: OnnxModel) -> int:
    g = onnx.load(str(model.path)).graph
    inits = {i.name for i in g.initializer}
    return sum(1 for n in g.node if n.op_type == "MatMul" and n.input[1] in inits)


@pytest.mark.parametrize("kw", [
    {"algorithm": "int8_qdq", "bits": 8},
    {"algorithm": "gptq", "bits": 8},
    {"algorithm": "rtn", "bits": 4, "block_size": 32},
    {"algorithm": "rtn", "bits": 8, "block_size": 128},
    {"algorithm": "gptq", "bits": 4, "block_size": 32, "act_order": True},
    {"algorithm": "gptq", "bits": 2, "block_size": 64, "symmetric": False},
    {"algorithm": "hqq", "bits": 4, "block_size": 64},
])
def test_recipe_writes_the_nodes_it_claims(kw, exported, ctx, fp32_ppl):
    config = OnnxPTQConfig(calibration_samples=8, **kw)
    q = quantize_onnx(exported, config, ctx)
    graph = onnx.load(str(q.model.path)).graph
    inits = {i.name: i for i in graph.initializer}
    n_weights = _weight_matmuls(exported)
    if config.resolved_format == "matmulnbits":
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == n_weights and _weight_matmuls(q.model) == 0
        for n in nbits:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["bits"] == config.resolved_bits and attrs["block_size"] == config.block_size
            assert inits[n.input[1]].data_type == onnx.TensorProto.UINT8  # packed weights
    else:
        dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        int8_weights = [n for n in dq if inits[n.input[0]].data_type == onnx.TensorProto.INT8]
        assert len(int8_weights) >= n_weights  # every weight MatMul reads an INT8 weight
        assert all(len(inits[n.input[1]].dims) == 1 for n in int8_weights)  # per-channel scales
        q_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert q_nodes  # activations are quantized too
    assert q.model.size_mb() < exported.size_mb()
    ppl = onnx_wikitext2_perplexity(q.model, EVAL, ctx)["wikitext2_ppl"]
    # measured drift on this model: under 0.1% at 8 and 4 bits, under 1% at 2 bits
    limit = {8: 0.01, 4: 0.02, 2: 0.05}[config.resolved_bits]
    assert np.isfinite(ppl) and abs(ppl - fp32_ppl) / fp32_ppl < limit


def test_input_graph_is_left_alone(exported, ctx):
    before = exported.path.read_bytes()
    quantize_onnx(exported, OnnxPTQConfig("rtn", 4, 32), ctx)
    assert exported.path.read_bytes() == before


def test_calibration_longer_than_the_model_is_refused(exported, ctx):
    with pytest.raises(ConfigError, match="calibration_seq_len"):
        quantize_onnx(exported, OnnxPTQConfig("int8_qdq", calibration_seq_len=4096), ctx)


@pytest.fixture(scope="module")
def torch_layer_inputs(opt_small, ctx):
    """{float weight [K, N] as bytes: X [tokens, K]}: each torch Linear's input on the
    recipe's own calibration blocks, captured by forward hooks (independent of ONNX)."""
    from sweeper.recipes.calibration import pick_blocks, token_blocks

    model = opt_small[0]
    blocks = pick_blocks(token_blocks(ctx, 128), 8, 0)
    acts, hooks = {}, []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = module.weight.detach().numpy().T.astype(np.float32).tobytes()
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, key=key: acts.setdefault(key, []).append(inp[0].reshape(-1, inp[0].shape[-1]))))
    with torch.no_grad():
        model(input_ids=blocks)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double().numpy() for k, v in acts.items()}


@pytest.mark.parametrize("kw", [
    {"bits": 4, "block_size": 32},
    {"bits": 4, "block_size": 32, "symmetric": False},
    {"bits": 4, "block_size": 64, "act_order": True},
    {"bits": 4, "block_size": 64, "symmetric": False, "act_order": True},
    {"bits": 8},  # QDQ + GPTQ 8-bit: GPTQ's codes in quantize_static's INT8 weights
])
def test_packed_graph_holds_gptqs_weights(kw, exported, ctx, torch_layer_inputs):
    """The artefact a user gets: every weight onnxruntime computes with, read back from
    the graph, is GPTQ's output bit for bit, and its layer output error on the torch
    model's own activations is well below round-to-nearest's on the same grid."""
    from onnx import numpy_helper

    from sweeper.recipes import onnx_weight_only as wo
    from sweeper.recipes.calibration import pick_blocks, token_blocks
    from sweeper.recipes.gptq_update import gptq, rtn
    from sweeper.recipes.matmul_nbits import packed_prefix, runtime_weight

    config = OnnxPTQConfig("gptq", calibration_samples=8, **kw)
    q = quantize_onnx(exported, config, ctx)
    float_graph = onnx.load(str(exported.path)).graph
    floats = {i.name: numpy_helper.to_array(i) for i in float_graph.initializer}
    weights = {n.input[1]: n.input[0] for n in wo.weight_matmuls(float_graph)}
    blocks = pick_blocks(token_blocks(ctx, 128), 8, 0).numpy()
    hessians = wo.layer_input_hessians(exported.path, sorted(set(weights.values())), blocks, ctx.workdir)
    group = -1 if config.resolved_format == "qdq" else config.block_size
    graph = onnx.load(str(q.model.path)).graph
    by_input = {(n.input[1] if n.op_type == "MatMulNBits" else n.input[0]): n for n in graph.node}
    checked = 0
    for name, act in weights.items():
        W = floats[name]
        want = gptq(W, hessians[act], config.resolved_bits, group, config.resolved_symmetric,
                    percdamp=config.damp_percent, act_order=config.act_order)
        key = f"{name}_quantized" if group == -1 else f"{packed_prefix(name, config.resolved_bits, group)}_B"
        got = runtime_weight(graph, by_input[key])
        assert np.array_equal(got, want.dequantize()), name
        X = torch_layer_inputs[W.astype(np.float32).tobytes()]
        err = np.linalg.norm(X @ (W - got))
        err_rtn = np.linalg.norm(X @ (W - rtn(W, config.resolved_bits, group, config.resolved_symmetric).dequantize()))
        assert err < 0.9 * err_rtn, (name, err / err_rtn)
        checked += 1
    assert checked == len(weights) == _weight_matmuls(exported) > 0
    assert 0 < q.metrics["layer_error_vs_rtn"] < 0.9


def _nbits_by_layer(model: OnnxModel) -> tuple[dict, list]:
    """({layer weight name: bits} of the MatMulNBits nodes, [weights of plain float MatMuls])."""
    g = onnx.load(str(model.path)).graph
    inits = {i.name for i in g.initializer}
    nbits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in g.node if n.op_type == "MatMulNBits"}
    return nbits, [n.input[1] for n in g.node if n.op_type == "MatMul" and n.input[1] in inits]


def test_layers_are_named_after_their_modules(exported):
    from sweeper.recipes.onnx_weight_only import weight_layers

    layers = list(weight_layers(onnx.load(str(exported.path)).graph))
    assert len(layers) == len(set(layers)) == _weight_matmuls(exported) == 12
    for i in range(2):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"):
            assert f"model.decoder.layers.{i}.{part}" in layers


def test_per_layer_widths_in_the_packed_graph(exported, ctx, fp32_ppl):
    """The artefact: which nodes are MatMulNBits at which width, which stay float, and sizes."""
    from sweeper.recipes.onnx_weight_only import weight_layers

    layers = list(weight_layers(onnx.load(str(exported.path)).graph))
    ranking = layers[::-1]  # any order: the recipe must follow it, not the graph's

    def run(**kw):
        q = quantize_onnx(exported, OnnxPTQConfig("rtn", 2, 32, sensitivity_ranking=ranking, **kw), ctx)
        return q, *_nbits_by_layer(q.model)

    uniform, nb_u, float_u = run()
    assert sorted(nb_u.values()) == [2] * 12 and float_u == []
    mixed, nb_m, float_m = run(protected_layers=3, protected_bits=8)
    eight = [n for n, b in nb_m.items() if b == 8]
    assert len(eight) == 3 and sorted(nb_m.values()) == [2] * 9 + [8] * 3 and float_m == []
    names = weight_layers(onnx.load(str(exported.path)).graph)
    assert set(eight) == {names[layer].name + "_q8b32" for layer in ranking[:3]}  # the ranking's first three
    kept, nb_f, float_f = run(protected_layers=2)  # protected in float
    assert len(nb_f) == 10 and sorted(float_f) == sorted(names[layer].input[1] for layer in ranking[:2])
    alone, nb_a, float_a = run(layers=[layers[4]])
    assert len(nb_a) == 1 and len(float_a) == 11
    but, nb_b, float_b = run(float_layers=[layers[4]])
    assert len(nb_b) == 11 and float_b == [names[layers[4]].input[1]]
    assert mixed.metrics["float_layers"] == 0 and kept.metrics["float_layers"] == 2 and alone.metrics["float_layers"] == 11
    sizes = [m.model.size_mb() for m in (uniform, mixed, kept, but, alone)]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[0] < sizes[3] < sizes[4] < exported.size_mb()
    # one layer alone at 2 bits moves perplexity less than all of them
    ppl = {k: onnx_wikitext2_perplexity(m.model, EVAL, ctx)["wikitext2_ppl"] for k, m in (("all", uniform), ("alone", alone))}
    assert abs(ppl["alone"] - fp32_ppl) < abs(ppl["all"] - fp32_ppl)


@pytest.mark.parametrize("kw,word", [
    ({"algorithm": "hqq", "bits": 4, "block_size": 32, "layers": ["x"]}, "algorithm rtn or gptq into MatMulNBits"),
    ({"algorithm": "rtn", "bits": 4, "block_size": 32, "protected_layers": 2}, "give the experiment a sensitivity stage"),
    ({"algorithm": "rtn", "bits": 4, "block_size": 32, "sensitivity_ranking": ["a"], "protected_layers": 1,
      "protected_bits": 4}, "more than the trial's 4 bits"),
    ({"algorithm": "rtn", "bits": 4, "block_size": 32, "layers": "model.decoder.layers.0.fc1"}, "a list of layer names"),
])
def test_bad_layer_choices_are_refused(kw, word):
    with pytest.raises(ConfigError, match=word):
        OnnxPTQConfig(**kw)


def test_unknown_layer_is_named(exported, ctx):
    with pytest.raises(ConfigError, match="layers='model.decoder.layers.9.fc1'.*model.decoder.layers.0.self_attn.q_proj"):
        quantize_onnx(exported, OnnxPTQConfig("rtn", 4, 32, layers=["model.decoder.layers.9.fc1"]), ctx)
