"""The deployable ONNX QDQ graph of an aimet_qat trial: runs in onnxruntime, holds the sim's
quantizers, and scores what the sim scores (tiny GPT-2, real WikiText-2, CPU)."""
import json
import math

import numpy as np
import pytest
import onnx
import onnxruntime as ort
import torch

from sweeper.jobs import JobContext
from sweeper.recipes import quantize
from sweeper.recipes.aimet_export import evaluate_deployed, quantizer_coverage
from sweeper.recipes.aimet_qat import AimetQATConfig
from sweeper.tasks.perplexity import WikiText2PPL, wikitext2_perplexity

EVAL = WikiText2PPL(dataset="wikitext-2-raw-v1", split="test", max_tokens=2000, context_length=64)


def _ctx(tokenizer, workdir, reports, logs):
    from sweeper.data import TextSplit, load_wikitext

    val = load_wikitext("wikitext-2-v1", "validation")
    train = TextSplit(val.dataset, val.split, val.text[:20_000], val.source, val.join)
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tokenizer, train_text=train, workdir=str(workdir),
                     report=lambda metrics, artifacts=None: reports.append((metrics, artifacts or {})),
                     log=logs.append)
    ctx.evaluate = lambda m: wikitext2_perplexity(m, EVAL, ctx)
    return ctx


def _weight_dequantized_matmuls(graph) -> int:
    """MatMul/Gemm nodes whose weight is an integer initializer through DequantizeLinear."""
    producers = {o: n for n in graph.node for o in n.output}
    int_inits = {i.name for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    count = 0
    for n in graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            dq = producers.get(n.input[1])
            count += dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in int_inits
    return count


def test_deployed_graph_matches_sim(tiny_gpt2, tiny_tokenizer, tmp_path):
    from aimet_torch.nn import BaseQuantizationMixin
    from aimet_torch.quantization.base import QuantizerBase

    reports, logs = [], []
    ctx = _ctx(tiny_tokenizer, tmp_path / "job", reports, logs)
    q = quantize(tiny_gpt2, AimetQATConfig(epochs=0, calibration_batches=2, batch_size=4), ctx)
    metrics, artifacts = reports[-1]
    assert sorted(artifacts) == ["deploy_gap_by_op.json", "encodings.json", "model.onnx"]

    # a self-contained graph that onnxruntime runs at any batch and length ...
    path = tmp_path / "model.onnx"
    path.write_bytes(artifacts["model.onnx"])
    vocab = len(tiny_tokenizer)
    ids = torch.randint(0, vocab, (3, 64), generator=torch.Generator().manual_seed(1))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
    assert got.shape == (3, 64, vocab)
    assert session.run(["logits"], {"input_ids": ids[:1, :10].numpy()})[0].shape == (1, 10, vocab)
    # ... and, run as written, computes what the sim computes: the logits lie on the
    # lm_head output quantizer's grid, so they agree to the step (a float-rounding tie at
    # most moves one value by one step)
    with torch.no_grad():
        want = q.model.eval()(ids)[0].numpy()
    steps = np.abs(got - want) / q.model.lm.lm_head.output_quantizers[0].get_scale().item()
    assert steps.max() <= 1.001 and (steps > 0.5).mean() < 1e-3

    # every enabled sim quantizer is a DequantizeLinear with its encoding; each quantized
    # Linear (4 per block + lm_head) multiplies by a dequantized int8 weight
    graph = onnx.load(str(path)).graph
    coverage = quantizer_coverage(q.model, path)
    enabled = sum(isinstance(m, QuantizerBase) for m in q.model.modules())
    assert coverage["sim_quantizers"] == enabled > 0
    assert coverage["missing_in_graph"] == []
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert coverage["graph_dequantize_nodes"] == len(dq) >= enabled
    quantized = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    int_inits = {i.name for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert all(n.input[0] in quantized | int_inits for n in dq)
    # aimet's only additions: the attention's scale-by-constant Muls, re-encoded losslessly
    assert all("Mul " in e or "constant " in e for e in coverage["extra_in_graph"]), coverage["extra_in_graph"]
    linears = [m for m in q.model.modules() if isinstance(m, BaseQuantizationMixin) and isinstance(m, torch.nn.Linear)]
    assert _weight_dequantized_matmuls(graph) == len(linears) == 9

    # the deployed metric beside the simulated one, measured on the same settings
    sim_ppl, deploy_ppl = metrics["wikitext2_ppl"], metrics["deploy_wikitext2_ppl"]
    assert math.isfinite(deploy_ppl) and metrics["deploy_wikitext2_scored_tokens"] == metrics["wikitext2_scored_tokens"]
    assert metrics["sim_deploy_gap_pct"] == 100 * (deploy_ppl - sim_ppl) / sim_ppl
    assert abs(metrics["sim_deploy_gap_pct"]) < 0.5
    assert metrics["deploy_quantizers_missing"] == 0 and metrics["deploy_sim_quantizers"] == enabled
    assert metrics["deploy_export_max_abs_logit_diff"] < 1.001 * q.model.lm.lm_head.output_quantizers[0].get_scale().item()
    report = json.loads(artifacts["deploy_gap_by_op.json"])
    assert report["metric"] == "wikitext2_ppl" and report["graph"]["opset"] == 18
    # onnxruntime's CPU optimizations replace float QDQ emulation by integer kernels
    assert report["runtime_op_changes"].get("QuantizeLinear", 0) < 0
    assert any("deployed QDQ graph" in line for line in logs)

    # a GPU job on a node whose onnxruntime has no CUDA provider: refused on the job's own
    # kind, measured on the CPU when the recipe names deploy_kind="cpu" (and says so)
    from sweeper.devices.kinds import KINDS
    from sweeper.devices.ort_session import ProviderUnavailable

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        ctx.kind = KINDS["cuda"]
        with pytest.raises(ProviderUnavailable):
            evaluate_deployed(q.model, {"wikitext2_ppl": sim_ppl}, ctx, check_tokens=ids)
        on_cpu, files = evaluate_deployed(q.model, {"wikitext2_ppl": sim_ppl}, ctx, check_tokens=ids, kind="cpu")
        assert on_cpu["deploy_wikitext2_ppl"] == deploy_ppl and ctx.kind is KINDS["cuda"]
        assert json.loads(files["deploy_gap_by_op.json"])["deploy_kind"] == "cpu"
        ctx.kind = None

    # a bit width ONNX has no integer type for: no graph, and the reason is kept
    next(m for m in q.model.modules() if isinstance(m, QuantizerBase)).bitwidth = 6
    none, why = evaluate_deployed(q.model, {"wikitext2_ppl": sim_ppl}, ctx, check_tokens=ids)
    assert none == {} and "6" in json.loads(why["deploy_gap_by_op.json"])["skipped"]
