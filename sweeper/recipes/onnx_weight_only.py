"""Weight-only RTN and GPTQ of an ONNX graph's MatMul weights, packed by us.

The pipeline: find every MatMul whose weight is a constant 2-D initializer (the layers
onnxruntime's MatMulNBitsQuantizer would take), collect each layer input's Hessian
(2 X^T X / tokens) by running the float graph once over the calibration blocks, quantize
each weight (gptq_update.py), and write the integer codes into the graph: MatMulNBits
nodes (matmul_nbits.py), or, for the 8-bit QDQ recipe, the INT8 weights of the
quantize_static graph. Every packed weight is then read back through onnxruntime and must
equal the algorithm's dequantized weight exactly: a packer that re-rounds fails the
trial instead of passing RTN off as GPTQ.

Like onnxruntime's and Intel Neural Compressor's ONNX GPTQ, the Hessians come from one
pass over the float model (the paper quantizes layer by layer, feeding each layer the
already-quantized layers' outputs; that needs one model run per layer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .gptq_update import GroupQuantized, gptq, rtn
from .matmul_nbits import matmul_nbits_node, packed_prefix, runtime_weight, set_qdq_weight


@dataclass
class WeightOnlyResult:
    """What was quantized: {weight initializer name: codes}, and per layer the relative
    output error ||X (W - Q)|| / ||X W|| on the calibration inputs of the chosen
    algorithm and of RTN on the same grid (None without calibration)."""

    weights: dict[str, GroupQuantized] = field(default_factory=dict)
    layer_error: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def weight_matmuls(graph) -> list:
    """Returns the MatMul nodes of `graph` whose second input is a 2-D float initializer."""
    from onnx import TensorProto

    inits = {i.name: i for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and inits[n.input[1]].data_type == TensorProto.FLOAT]


def layer_name(node) -> str:
    """Returns the name of the module a MatMul node was exported from (torch.onnx's name
    scopes, else its weight's parameter name; e.g. "model.decoder.layers.0.fc1", without the
    export wrapper's "lm."), else the node's own name (a graph made elsewhere)."""
    import ast

    scopes = next((m.value for m in node.metadata_props if m.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        scopes = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        scopes = []
    module = scopes[-2] if len(scopes) >= 2 and scopes[-2] else ""
    if not module and node.input[1].endswith(".weight"):  # nodes the exporter rewrote keep the parameter's name
        module = node.input[1][:-len(".weight")]
    if module.startswith("lm."):
        module = module[3:]
    return module or node.name


def weight_layers(graph) -> dict[str, object]:
    """Returns {layer name: MatMul node} for `weight_matmuls(graph)` in graph order; a name
    that two nodes share gets "#2", "#3" ... on the later ones."""
    out: dict[str, object] = {}
    for node in weight_matmuls(graph):
        name, i = layer_name(node), 1
        while name in out:
            i += 1
            name = f"{layer_name(node)}#{i}"
        out[name] = node
    return out


def hessian_bytes(graph, input_names) -> int:
    """Returns the bytes that float64 Hessians of the named MatMul inputs take (K x K each)."""
    inits = {i.name: i for i in graph.initializer}
    k = {n.input[0]: inits[n.input[1]].dims[0] for n in weight_matmuls(graph)}
    return sum(8 * k[name] ** 2 for name in set(input_names))


def layer_input_hessians(model_path: Path, input_names: list[str], blocks: np.ndarray, workdir: Path,
                         batch_size: int = 8) -> dict[str, np.ndarray]:
    """Returns {tensor name: H float64 [K, K]} with H = 2 X^T X / tokens over every token
    of the calibration `blocks` (int64 [n, seq_len]) for each named activation X of the
    float graph at `model_path`, computed on the CPU in one pass."""
    import onnx
    import onnxruntime as ort

    from ..models.onnx_export import INPUT_NAME, cpu_session_options, save_onnx

    proto = onnx.load(str(model_path))
    del proto.graph.output[:]
    for name in input_names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    augmented = save_onnx(proto, Path(workdir) / "hessian-taps" / "model.onnx")
    del proto
    session = ort.InferenceSession(str(augmented), cpu_session_options(), providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for start in range(0, len(blocks), batch_size):
        outs = session.run(input_names, {INPUT_NAME: blocks[start:start + batch_size]})
        for name, x in zip(input_names, outs):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            sums[name] = sums.get(name, 0) + x.T @ x
        tokens += blocks[start:start + batch_size].size
    return {name: 2 * s / tokens for name, s in sums.items()}


def relative_output_error(W: np.ndarray, Q: np.ndarray, H: np.ndarray) -> float:
    """Returns ||X (W - Q)|| / ||X W|| computed from H ∝ X^T X (both [K, N] weights)."""
    D = W - Q
    return float(np.sqrt(np.einsum("kn,kj,jn->", D, H, D) / max(np.einsum("kn,kj,jn->", W, H, W), 1e-300)))


def quantize_weights(proto, algorithm: str, bits: int, group_size: int, symmetric: bool, *,
                     hessians: dict[str, np.ndarray] | None = None, act_order: bool = False,
                     damp_percent: float = 0.01, bits_of: dict[str, int] | None = None,
                     log=lambda msg: None) -> WeightOnlyResult:
    """Returns the codes of every weight of `weight_matmuls(proto.graph)` under "rtn" or
    "gptq" (which needs `hessians` keyed by the MatMul's input name); group_size -1 means
    per output channel. `bits_of` ({weight initializer name: bits}) quantizes only the
    weights it names, each at its own width (None: all at `bits`). The graph is not changed."""
    from onnx import numpy_helper

    t0 = time.perf_counter()
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = [n for n in weight_matmuls(proto.graph) if bits_of is None or n.input[1] in bits_of]
    result = WeightOnlyResult()
    for i, node in enumerate(nodes):
        weight = node.input[1]
        if weight in result.weights:
            continue
        width = bits if bits_of is None else bits_of[weight]
        W = numpy_helper.to_array(inits[weight]).astype(np.float64)
        base = rtn(W, width, group_size, symmetric)
        if algorithm == "gptq":
            H = hessians[node.input[0]]
            q = gptq(W, H, width, group_size, symmetric, percdamp=damp_percent, act_order=act_order)
            result.layer_error[weight] = {"rtn": relative_output_error(W, base.dequantize(), H),
                                          "gptq": relative_output_error(W, q.dequantize(), H)}
        else:
            q = base
        result.weights[weight] = q
        if (i + 1) % 10 == 0 or i + 1 == len(nodes):
            log(f"{algorithm}: {i + 1}/{len(nodes)} weights quantized ({time.perf_counter() - t0:.1f}s)")
    result.seconds = time.perf_counter() - t0
    return result


def write_matmul_nbits(proto, result: WeightOnlyResult, block_size: int, accuracy_level: int | None = None) -> int:
    """Replaces each weight MatMul of `proto` (in place) by a MatMulNBits node holding the
    codes of `result`; drops float weights no longer read. Returns the nodes replaced."""
    graph = proto.graph
    replaced = 0
    for node in weight_matmuls(graph):
        q = result.weights.get(node.input[1])
        if q is None:
            continue
        new, inits = matmul_nbits_node(node, q, block_size, accuracy_level)
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, new)
        graph.initializer.extend(inits)
        replaced += 1
    read = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name in result.weights and i.name not in read]:
        graph.initializer.remove(init)
    return replaced


def write_dequantized_weights(proto, result: WeightOnlyResult) -> None:
    """Sets each quantized float weight of `proto` (in place) to its dequantized value, so
    a later calibration pass sees the quantized model."""
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        q = result.weights.get(init.name)
        if q is not None:
            init.CopyFrom(numpy_helper.from_array(q.dequantize(), init.name))


def write_qdq_weights(proto, result: WeightOnlyResult) -> None:
    """Overwrites (in place) the INT8 weights quantize_static wrote with `result`'s codes."""
    for name, q in result.weights.items():
        set_qdq_weight(proto.graph, name, q)


def verify_packed(proto, result: WeightOnlyResult) -> int:
    """Raises RuntimeError unless every quantized weight, as onnxruntime reads it from the
    graph, equals its codes' dequantized value bit for bit; returns the weights checked."""
    graph = proto.graph
    packed = {f"{packed_prefix(w, q.bits, q.group_size)}_B": w for w, q in result.weights.items()}
    packed.update({f"{w}_quantized": w for w in result.weights})
    checked = 0
    for node in graph.node:
        weight = packed.get(node.input[1] if node.op_type == "MatMulNBits" else node.input[0]) \
            if node.op_type in ("MatMulNBits", "DequantizeLinear") and node.input else None
        if weight is None:
            continue
        got, want = runtime_weight(graph, node), result.weights[weight].dequantize()
        if got.shape != want.shape or not np.array_equal(got, want):
            diff = np.abs(got - want).max() if got.shape == want.shape else f"shape {got.shape} vs {want.shape}"
            raise RuntimeError(f"packed weight {weight} in node {node.name} is not the quantizer's (max diff {diff})")
        checked += 1
    if checked != len(result.weights):
        raise RuntimeError(f"verified {checked} packed weights, expected {len(result.weights)}")
    return checked
