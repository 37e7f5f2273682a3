"""The deployable form of an aimet QuantSim: an ONNX QDQ graph, its accuracy, and how it
differs from the sim.

aimet-torch's own exporter (`aimet_torch.onnx.export`) writes every enabled quantizer of the
sim as ONNX QuantizeLinear/DequantizeLinear carrying the learned encodings, so onnxruntime
runs the graph directly, without the encodings JSON. Weights are stored quantized (int8
initializer -> DequantizeLinear: `prequantize_constants`), so the graph is the size a user
would ship. Bias stays float: the sim does not quantize it, and aimet's default int32 bias
would be a quantizer the sim never simulated.

Export follows the project's conventions (models/onnx_export.py): torch's dynamo exporter,
input `input_ids`, output `logits`, dynamic batch and sequence, opset 18 (21 where a
quantizer is 4- or 16-bit: QuantizeLinear has those integer types from opset 21 only).

Where the deployed metric differs from the sim's: run as written, the graph reproduces the
sim's logits (0.0 max difference on gpt2-ref, per-tensor W8A8); onnxruntime's default
optimizations then fuse QDQ around MatMul/Add/Mul into integer kernels (MatMulIntegerToFloat,
QLinearMatMul, QLinearAdd, ...) that round their intermediate results differently. On
gpt2-ref with the QAT smoke settings that moves perplexity by about 0.03%.
`deploy_gap_by_op.json` records both comparisons and the ops the runtime replaced.

The sim and the graph are compared quantizer by quantizer on their encodings (bit width and
scales), not on names: the sim names modules, the graph names tensors. aimet adds QDQ pairs
that copy an existing encoding (outputs of Reshape/Transpose/Gather take their input's), so
the graph may hold more pairs than the sim has quantizers; what matters is a sim encoding
the graph lacks, or a graph encoding no sim quantizer has.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..devices.kinds import KINDS, get_kind
from ..models.onnx_export import INPUT_NAME, OUTPUT_NAME, OnnxModel, cpu_session_options, max_positions_of, save_onnx

DEPLOY_GRAPH_NAME = "model.onnx"
GAP_REPORT_NAME = "deploy_gap_by_op.json"
# bit widths ONNX QuantizeLinear/DequantizeLinear can carry (int4/int16 from opset 21 only)
ONNX_BITWIDTHS = (4, 8, 16)
# a sim-vs-deployed gap past this (in %) is worth a log line
GAP_WARN_PCT = 0.5
# scales are compared to this many significant digits (float32 keeps ~7)
SCALE_DIGITS = 6
_ONNX_INT_BITS = {"INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "UINT16": 16, "INT32": 32, "UINT32": 32}


def sim_quantizers(sim_model) -> list[tuple[str, int, tuple]]:
    """Returns (name, bit width, scales) for every enabled, initialised affine quantizer of
    the sim: parameter, input and output quantizers; scales rounded to SCALE_DIGITS digits."""
    from aimet_torch.nn import BaseQuantizationMixin
    from aimet_torch.quantization.affine import AffineQuantizerBase

    out = []
    for mname, mod in sim_model.named_modules():
        if not isinstance(mod, BaseQuantizationMixin):
            continue
        named = [(f"{mname}.{p}", q) for p, q in mod.param_quantizers.items()]
        named += [(f"{mname}.input_quantizers.{i}", q) for i, q in enumerate(mod.input_quantizers)]
        named += [(f"{mname}.output_quantizers.{i}", q) for i, q in enumerate(mod.output_quantizers)]
        for name, q in named:
            if isinstance(q, AffineQuantizerBase) and q.is_initialized():
                scales = q.get_scale().detach().float().cpu().flatten().tolist()
                out.append((name, int(q.bitwidth), _rounded(scales)))
    return out


def graph_quantizers(path) -> list[tuple[str, int, tuple]]:
    """Returns (label, bit width, scales) for every DequantizeLinear of the graph at `path`;
    scales rounded to SCALE_DIGITS digits. The label names the node and what it dequantizes:
    "<node> (<op type> <op name> output)" or "<node> (constant <name>)"."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=True).graph
    consts = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts.update({o: a.t for o in n.output for a in n.attribute if a.name == "value"})
    producers = {o: n for n in graph.node for o in n.output}

    def source(name: str) -> str:
        node = producers.get(name)
        if node is not None and node.op_type == "QuantizeLinear":
            return source(node.input[0])
        return f"constant {name}" if node is None or node.op_type == "Constant" else f"{node.op_type} {node.name} output"

    out = []
    for n in graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        scales = numpy_helper.to_array(consts[n.input[1]]).astype("float64").flatten().tolist()
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        xq = consts.get(n.input[0])  # a prequantized weight carries the integer type itself
        dtype = (zp or xq).data_type if (zp or xq) is not None else onnx.TensorProto.UINT8
        out.append((f"{n.name or n.output[0]} ({source(n.input[0])})", _ONNX_INT_BITS.get(onnx.TensorProto.DataType.Name(dtype), 0),
                    _rounded(scales)))
    return out


def quantizer_coverage(sim_model, path) -> dict:
    """Returns how the graph at `path` covers the sim's quantizers: {"sim_quantizers": count,
    "graph_dequantize_nodes": count, "missing_in_graph": [sim quantizer names whose encoding
    no DequantizeLinear has], "extra_in_graph": [graph_quantizers labels of DequantizeLinear
    nodes whose encoding no sim quantizer has]}. Encodings are (bit width, scales)."""
    sim = sim_quantizers(sim_model)
    graph = graph_quantizers(path)
    graph_keys = Counter((b, s) for _, b, s in graph)
    sim_keys = {(b, s) for _, b, s in sim}
    return {
        "sim_quantizers": len(sim),
        "graph_dequantize_nodes": len(graph),
        "missing_in_graph": [name for name, b, s in sim if (b, s) not in graph_keys],
        "extra_in_graph": [name for name, b, s in graph if (b, s) not in sim_keys],
    }


def export_qdq_graph(sim_model, out_dir, *, example=None, source_key: str = "") -> OnnxModel:
    """Exports the sim (a causal LM wrapper: input_ids -> (logits,)) to `out_dir`/model.onnx
    as an ONNX QDQ graph with aimet's exporter; returns its OnnxModel, whose info holds the
    exporter, opset and export time (s). example: a (batch, seq) LongTensor to trace with
    (random ids of shape (2, 16) when None). `out_dir` is emptied first.

    aimet writes its weights as external data into several files beside the graph, some
    of them left over from its intermediate steps; the graph is re-saved self-contained
    (one external data file past 1.5 GB, as models/onnx_export.save_onnx does)."""
    import shutil
    import tempfile
    import warnings

    import onnx

    import aimet_torch.onnx as aimet_onnx
    import torch

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    max_pos = max_positions_of(sim_model)
    vocab = sim_model.config.vocab_size
    device = next(sim_model.parameters()).device
    if example is None:
        # batch 2 so torch.export specialises neither dimension to 1
        example = torch.randint(0, vocab, (2, min(16, max_pos)), generator=torch.Generator().manual_seed(0))
    example = example.to(device)
    opset = 18 if {b for _, b, _ in sim_quantizers(sim_model)} <= {8} else 21
    was_training = sim_model.training
    sim_model.eval()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="aimet_onnx_") as tmp:
            warnings.simplefilter("ignore")
            aimet_onnx.export(
                sim_model, (example,), str(Path(tmp) / DEPLOY_GRAPH_NAME), export_int32_bias=False,
                prequantize_constants=True, opset_version=opset, dynamo=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096),
                                 1: torch.export.Dim("sequence", min=1, max=max_pos)},))
            save_onnx(onnx.load(str(Path(tmp) / DEPLOY_GRAPH_NAME)), out_dir / DEPLOY_GRAPH_NAME)
    finally:
        sim_model.train(was_training)
    import aimet_torch

    return OnnxModel(out_dir / DEPLOY_GRAPH_NAME, max_pos, vocab, source_key, {
        "exporter": f"aimet_torch.onnx.export dynamo=True (aimet-torch {aimet_torch.__version__}, "
                    f"torch {torch.__version__})",
        "opset": opset, "export_seconds": round(time.perf_counter() - t0, 2), "precision": "qdq"})


def check_against_sim(sim_model, path, tokens) -> dict:
    """Returns how far the graph at `path`, run by onnxruntime on the CPU, is from the sim on
    `tokens` (a (batch, seq) LongTensor): {"as_exported": {...}, "as_optimized": {...}}, each
    {"max_abs_logit_diff", "mean_abs_logit_diff"} in logits. as_exported runs the graph as
    written (graph optimizations off): it should match the sim to float rounding. as_optimized
    runs it as the runtime does by default (ORT_ENABLE_ALL), where QDQ pairs around
    MatMul/Add/... are fused into integer kernels that round their intermediate results
    differently."""
    import numpy as np
    import onnxruntime as ort
    import torch

    device = next(sim_model.parameters()).device
    was_training = sim_model.training
    sim_model.eval()  # dropout off, as in the graph
    try:
        with torch.no_grad():
            want = sim_model(tokens.to(device))[0].float().cpu().numpy()
    finally:
        sim_model.train(was_training)
    out = {}
    for label, level in (("as_exported", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                         ("as_optimized", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        options = cpu_session_options()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        diff = np.abs(session.run([OUTPUT_NAME], {INPUT_NAME: tokens.cpu().numpy()})[0] - want)
        out[label] = {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean())}
    return out


def runtime_op_changes(path, kind) -> dict[str, int]:
    """Returns {op type: count in the optimized graph - count in the exported graph}, for the
    op types whose count changed when onnxruntime optimized the graph at `path` for `kind`'s
    providers (e.g. {"QuantizeLinear": -12, "MatMulIntegerToFloat": 9}): where the runtime
    computes differently from the sim's float QDQ emulation."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort_optimized_") as tmp:
        options = cpu_session_options()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=[n for n, _ in kind.providers],
                             provider_options=[dict(o) for _, o in kind.providers])
        after = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    before = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: after[op] - before[op] for op in sorted(set(after) | set(before)) if after[op] != before[op]}


def gap_pct(sim_value: float, deploy_value: float) -> float:
    """Returns 100 * (deploy - sim) / sim: the deployed graph's metric relative to the sim's, in %."""
    return 100.0 * (deploy_value - sim_value) / sim_value


def evaluate_deployed(sim_model, sim_metrics: dict, ctx, check_tokens, kind: str | None = None) -> tuple[dict, dict]:
    """Exports the sim as an ONNX QDQ graph (into ctx.workdir, or a temporary folder),
    evaluates it with the job's task through onnxruntime on device kind `kind` (None: the
    job's own), and returns (metrics, artifacts). check_tokens: a (batch, seq) LongTensor of real token ids
    the graph's logits are compared with the sim's on (check_against_sim).

    metrics: `deploy_<key>` for every number the task returned (deploy_wikitext2_ppl, ...),
    `sim_deploy_gap_pct` (gap_pct of the task's first metric, e.g. wikitext2_ppl: the
    headline of the task), and the graph's QDQ coverage counts (deploy_qdq_nodes,
    deploy_sim_quantizers, deploy_quantizers_missing, deploy_quantizers_extra), and
    deploy_export_max_abs_logit_diff (check_against_sim's as_exported, in logits).
    artifacts: {"model.onnx": the graph's bytes (when it is one file, under 1.5 GB),
    "deploy_gap_by_op.json": quantizer_coverage, the gap, check_against_sim and
    runtime_op_changes, as JSON}. A sim with a bit
    width ONNX cannot carry (not in ONNX_BITWIDTHS) has no deployable graph: ({},
    {"deploy_gap_by_op.json": the reason})."""
    import json
    import tempfile

    odd = sorted({b for _, b, _ in sim_quantizers(sim_model)} - set(ONNX_BITWIDTHS))
    if odd:
        reason = f"no deployable graph: ONNX QuantizeLinear has no {odd}-bit integers (only {list(ONNX_BITWIDTHS)})"
        ctx.log(f"aimet_export: {reason}")
        return {}, {GAP_REPORT_NAME: json.dumps({"skipped": reason}).encode()}
    tmp = None
    if ctx.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="aimet_deploy_")
    folder = Path(ctx.workdir or tmp.name) / "deploy"
    try:
        graph = export_qdq_graph(sim_model, folder)
        deployed = _evaluate_on(ctx, graph, kind)
        coverage = quantizer_coverage(sim_model, graph.path)
        logits = check_against_sim(sim_model, graph.path, check_tokens)
        op_changes = _op_changes_or_reason(graph.path, get_kind(kind) if kind else ctx.kind or KINDS["cpu"])
        head = next(k for k, v in sim_metrics.items() if isinstance(v, float))
        metrics = {f"deploy_{k}": v for k, v in deployed.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({
            "sim_deploy_gap_pct": gap_pct(sim_metrics[head], deployed[head]),
            "deploy_qdq_nodes": coverage["graph_dequantize_nodes"],
            "deploy_sim_quantizers": coverage["sim_quantizers"],
            "deploy_quantizers_missing": len(coverage["missing_in_graph"]),
            "deploy_quantizers_extra": len(coverage["extra_in_graph"]),
            "deploy_export_max_abs_logit_diff": logits["as_exported"]["max_abs_logit_diff"],
        })
        report = {"metric": head, "sim": sim_metrics[head], "deploy": deployed[head],
                  "sim_deploy_gap_pct": metrics["sim_deploy_gap_pct"], "graph": graph.info,
                  "runtime": deployed.get("eval_settings", {}).get("runtime"), "logits_vs_sim": logits,
                  "deploy_kind": kind or getattr(ctx.kind, "name", "cpu"),
                  "runtime_op_changes": op_changes, **coverage}
        artifacts = {GAP_REPORT_NAME: json.dumps(report, indent=1).encode()}
        if abs(metrics["sim_deploy_gap_pct"]) > GAP_WARN_PCT:
            ctx.log(f"aimet_export: deployed {head} is {metrics['sim_deploy_gap_pct']:+.2f}% off the sim's; "
                    f"{len(coverage['missing_in_graph'])} sim quantizers missing in the graph, "
                    f"{len(coverage['extra_in_graph'])} graph quantizers not in the sim (see {GAP_REPORT_NAME})")
        if len(list(graph.folder.iterdir())) == 1:  # past 1.5 GB the weights lie beside it: too big to ship
            artifacts[DEPLOY_GRAPH_NAME] = graph.path.read_bytes()
        else:
            ctx.log(f"aimet_export: the deployed graph ({graph.size_mb():.0f} MB) has external data; not kept")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return metrics, artifacts


def _evaluate_on(ctx, graph, kind: str | None) -> dict:
    """The job's task on `graph` with the session on device kind `kind` (None: ctx's own)."""
    if not kind:
        return ctx.evaluate(graph)
    # ctx.evaluate runs the task with ctx itself, whose kind picks the onnxruntime provider:
    # lend it the deploy kind for this one evaluation.
    own = ctx.kind
    ctx.kind = get_kind(kind)
    try:
        return ctx.evaluate(graph)
    finally:
        ctx.kind = own


def _op_changes_or_reason(path, kind):
    """runtime_op_changes, or the reason it could not be had: a diagnostic, it never ends a trial."""
    try:
        return runtime_op_changes(path, kind)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
        return f"not available on {kind.name}: {type(e).__name__}: {str(e)[:200]}"


def _rounded(values) -> tuple:
    return tuple(float(f"{v:.{SCALE_DIGITS}g}") for v in values)
