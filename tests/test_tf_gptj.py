"""The TensorFlow path: Keras GPT-J vs torch, the SavedModel, INC static INT8, LAMBADA on
three runtimes, TF workers. One tiny GPT-J (from a config) and one SavedModel for all."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gptj(tiny_tokenizer):
    """A randomly initialised 2-layer GPTJForCausalLM (64 wide, rotary on 8 of 16 head dims)."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    cfg = GPTJConfig(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                     n_inner=128, bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    model = GPTJForCausalLM(cfg).eval()
    with torch.no_grad():  # a visible LM-head bias, so copying it is checked too
        model.lm_head.bias.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def real_tokens(tiny_tokenizer):
    from sweeper.models.tf_export import real_check_tokens

    return real_check_tokens(tiny_tokenizer, 256)


@pytest.fixture(scope="module")
def saved(gptj, real_tokens, tmp_path_factory):
    """The SavedModel of `gptj`, exported once (checked against torch inside)."""
    from sweeper.models.tf_export import export_saved_model

    return export_saved_model(gptj, tmp_path_factory.mktemp("tf") / "saved_model", source_key="tiny",
                              check_tokens=real_tokens, log=lambda m: None)


def test_saved_model_equals_torch(gptj, saved, real_tokens):
    from sweeper.models.tf_gptj import check_against_torch

    for key in ("keras_max_abs_logit_diff", "saved_model_max_abs_logit_diff"):
        assert set(saved.info[key]) == {"8", "37", "64"}  # the lengths asked for, capped at 64 positions
        assert max(saved.info[key].values()) <= 1e-4
    # reloaded from disk, through the serving signature, at other lengths and batch 3
    diffs = check_against_torch(saved.runner(), gptj, real_tokens[20:], lengths=(1, 13, 50), batch=3)
    assert max(diffs.values()) <= 1e-4
    assert saved.max_positions == 64 and saved.vocab_size == len(gptj.lm_head.bias)


@pytest.mark.parametrize("overrides", [{"rotary_dim": 8, "n_inner": None, "activation_function": "gelu"},
                                       {"rotary_dim": 16, "n_head": 2, "layer_norm_epsilon": 1e-6}])
def test_keras_gptj_any_config(overrides, real_tokens):
    """Other GPT-J configs (rotary over the whole head of 8 dims, exact gelu, default FFN width) convert the same way."""
    import torch
    from transformers import GPTJConfig, GPTJForCausalLM

    from sweeper.models.tf_gptj import check_against_torch, from_torch

    torch.manual_seed(1)
    cfg = GPTJConfig(**{"vocab_size": 512, "n_positions": 32, "n_embd": 32, "n_layer": 1, "n_head": 4, **overrides})
    model = GPTJForCausalLM(cfg).eval()
    keras_model = from_torch(model)
    diffs = check_against_torch(lambda ids: keras_model(ids).numpy(), model, real_tokens, lengths=(5, 32))
    assert max(diffs.values()) <= 1e-4


@pytest.fixture(scope="module")
def int8(saved, tiny_tokenizer, tmp_path_factory):
    """The INC static INT8 recipe applied to the SavedModel, calibrated on WikiText-2 text."""
    import torch

    from sweeper.data import load_training_text
    from sweeper.jobs import JobContext
    from sweeper.recipes.inc_static import IncStaticConfig, quantize_tf

    cache = {}
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer, log=lambda m: None,
                     cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()),
                     train_text=load_training_text(), workdir=str(tmp_path_factory.mktemp("inc")))
    return quantize_tf(saved, IncStaticConfig(calibration_samples=8, calibration_seq_len=32), ctx)


def test_inc_graph_has_quantize_dequantize_before_matmul(int8):
    import tensorflow as tf

    from sweeper.recipes.inc_static import GRAPH_FILES

    assert set(GRAPH_FILES) <= set(int8.artifacts)
    converted = tf.compat.v1.GraphDef()
    converted.ParseFromString(int8.artifacts["converted_graph_def.pb"])
    extracted = tf.compat.v1.GraphDef()
    extracted.ParseFromString(int8.artifacts["extracted_graph_def.pb"])
    by_name = {n.name: n for n in converted.node}

    def producer_op(inp):
        node = by_name.get(inp.lstrip("^").split(":")[0])
        return node.op if node else None

    fp32_matmuls = [n for n in extracted.node if n.op == "MatMul"]
    assert len(fp32_matmuls) == 2 * 6 + 1  # q, k, v, out, fc_in, fc_out per layer + the LM head
    assert not any("Quantize" in n.op for n in extracted.node)
    ops = [n.op for n in converted.node]
    assert "MatMul" not in ops  # every float MatMul was replaced
    # INC's int8 MatMul: QuantizeV2 (activations) in front, dequantize either a Dequantize
    # node after it or fused into the kernel (QuantizedMatMulWithBiasAndDequantize)
    quantized = [n for n in converted.node if n.op.startswith("QuantizedMatMul")]
    assert len(quantized) == len(fp32_matmuls)
    for n in quantized:
        assert producer_op(n.input[0]) == "QuantizeV2", n.name
        consumers = {m.op for m in converted.node if any(i.split(":")[0] == n.name for i in m.input)}
        assert n.op.endswith("AndDequantize") or "Dequantize" in consumers, (n.name, n.op, consumers)
    # q, k, v and fc_in read one LayerNorm output: one QuantizeV2 per distinct input (3 per layer + LM head)
    assert ops.count("QuantizeV2") == 2 * 3 + 1
    # the text form says the same as the binary one
    assert int8.artifacts["converted_graph_def.pbtxt"].decode().count('op: "QuantizeV2"') == ops.count("QuantizeV2")


def test_int8_saved_model_runs_close_to_fp32(int8, saved, real_tokens):
    import numpy as np

    ids = np.asarray(real_tokens[:64], np.int64).reshape(2, 32)
    fp32 = saved.runner()(ids)
    q = int8.model.runner()(ids)
    assert q.shape == fp32.shape and np.isfinite(q).all()
    rel = np.abs(q - fp32).mean() / np.abs(fp32).mean()
    assert 0 < rel < 0.1  # quantized (not the same graph), yet the same function within INT8 error
    assert (q.argmax(-1) == fp32.argmax(-1)).mean() > 0.8


def test_three_runtimes_agree_on_lambada(gptj, saved, tiny_tokenizer, tmp_path):
    import torch

    from sweeper.jobs import JobContext
    from sweeper.models.onnx_export import export_causal_lm
    from sweeper.tasks.lambada import LambadaTask, lambada

    cache = {}
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tiny_tokenizer,
                     cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))
    task = LambadaTask(objective="lambada_ppl", max_samples=30, batch_size=8, timing_batch_size=0, warmup_runs=0,
                       timed_runs=1)
    onnx_model = export_causal_lm(gptj, tmp_path / "onnx", log=lambda m: None)
    got = {name: lambada(m, task, ctx) for name, m in (("torch", gptj), ("onnx", onnx_model), ("tf", saved))}
    for name in ("onnx", "tf"):
        assert abs(got[name]["lambada_acc"] - got["torch"]["lambada_acc"]) <= 0.1
        assert got[name]["lambada_ppl"] == pytest.approx(got["torch"]["lambada_ppl"], rel=1e-3)
    assert got["tf"]["eval_settings"]["runtime"].startswith("tensorflow")


def test_tf_extra_pins_match_pyproject():
    import tomllib

    from sweeper.models.tf_runtime import TF_REQUIREMENTS

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tf"]
    assert set(TF_REQUIREMENTS) <= set(extra)


def test_without_tensorflow_one_line_how_to_install():
    """With TensorFlow unimportable, the TF experiment stops with one line naming the extra."""
    code = ("import sys; sys.modules['tensorflow'] = None; sys.path.insert(0, 'experiments'); "
            "import gptj_tf_int8; gptj_tf_int8.experiment(smoke=True)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert re.search(r"TFUnavailable: .*install the tf extra: pip install -e '\.\[tf\]'$", last)


def test_tf_worker_process_can_still_load_torch_models():
    """A TF worker imports TensorFlow at start, then loads a transformers model (which pulls
    in triton): in that order the process must live, with oneDNN on for INC's INT8 kernels."""
    code = ("import os; from sweeper.models.tf_runtime import require_tf; require_tf(); "
            "import triton; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])")  # what transformers pulls in
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TF_ENABLE_ONEDNN_OPTS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_tf_worker_kinds(monkeypatch):
    from sweeper.devices.kinds import KINDS
    from sweeper.devices.tf_workers import start_error, tf_kind
    from sweeper.models.tf_runtime import TF_REQUIREMENTS

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = tf_kind(KINDS["cpu"])
    assert local.frameworks == ("tensorflow",) and "runtime_env" not in local.actor_options()
    assert start_error(local) is None  # this environment has the extra
    assert start_error(KINDS["cpu"]) is None  # torch-only kinds never import TF
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    cluster = tf_kind(KINDS["cpu"])
    assert cluster.actor_options()["runtime_env"]["pip"]["packages"] == list(TF_REQUIREMENTS)
    assert cluster.actor_options()["num_cpus"] == 1
    assert "runtime_env" not in KINDS["cpu"].actor_options()


def test_fp32_ops_name_the_graphs_nodes(int8):
    """fp32_ops entries become the op-name patterns INC's set_local matches (re.match)."""
    import re

    import tensorflow as tf

    from sweeper.recipes.inc_static import fp32_patterns

    extracted = tf.compat.v1.GraphDef()
    extracted.ParseFromString(int8.artifacts["extracted_graph_def.pb"])
    matmuls = [n.name for n in extracted.node if n.op == "MatMul"]
    head = fp32_patterns(["lm_head"], extracted)
    kept = [n for n in matmuls if any(re.match(p, n) for p in head)]
    assert len(kept) == 1 and "lm_head" in kept[0]
    concat = fp32_patterns(["ConcatV2"], extracted)
    assert sorted(n.name for n in extracted.node if any(re.match(p, n.name) for p in concat)) == \
        sorted(n.name for n in extracted.node if n.op == "ConcatV2")
