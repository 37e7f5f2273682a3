"""Writes integer weight codes into an ONNX graph as they are, and reads back what the
runtime makes of them.

- `matmul_nbits_node`: a MatMul with a constant [K, N] weight becomes onnxruntime's
  `com.microsoft.MatMulNBits` with the codes packed in its layout: B uint8
  [N, ceil(K / block), block * bits / 8] (codes of one column's block, low bits first),
  scales [N, blocks], and, for asymmetric grids, zero points uint8 [N, ceil(blocks * bits / 8)]
  packed the same way per column. A symmetric grid's zero point is 2^(bits-1), which is
  MatMulNBits' default, so no zero-point input is written.
- `set_qdq_weight`: overwrites the per-channel INT8 weight and scale that quantize_static
  wrote for a weight with the codes and scales given.
- `runtime_weight`: the [K, N] weight onnxruntime computes with, read by running the
  node (or the weight's DequantizeLinear) on an identity input.
"""
from __future__ import annotations

import numpy as np

from .gptq_update import GroupQuantized

MATMUL_NBITS_BITS = (2, 4, 8)  # widths whose packing onnxruntime's CPU kernel reads


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Returns uint8 [rows, cols * bits / 8]: each row's codes (uint [rows, cols], cols a
    multiple of 8 / bits) packed little-end first, as MatMulNBits reads them."""
    per_byte = 8 // bits
    rows, cols = codes.shape
    c = codes.astype(np.uint8).reshape(rows, cols // per_byte, per_byte)
    out = np.zeros((rows, cols // per_byte), dtype=np.uint8)
    for j in range(per_byte):
        out |= (c[:, :, j] << (bits * j)).astype(np.uint8)
    return out


def matmul_nbits_inputs(q: GroupQuantized, block_size: int) -> dict[str, np.ndarray]:
    """Returns {"B": packed codes, "scales": float32, "zero_points": uint8 (asymmetric
    only)} for the weight `q`, whose groups must be `block_size` input channels."""
    if q.bits not in MATMUL_NBITS_BITS:
        raise ValueError(f"MatMulNBits packs {MATMUL_NBITS_BITS} bits, not {q.bits}")
    if q.group_size != block_size:
        raise ValueError(f"weight groups of {q.group_size} channels cannot be packed in blocks of {block_size}")
    K, N = q.shape
    blocks = -(-K // block_size)
    pad = blocks * block_size - K
    # padded channels meet no input (A has K columns); their code is the zero point
    codes = np.concatenate([q.codes.T, np.repeat(q.zeros[-1][:, None], pad, axis=1).astype(np.uint8)], axis=1)
    packed = pack_rows(codes, q.bits).reshape(N, blocks, block_size * q.bits // 8)
    out = {"B": packed, "scales": np.ascontiguousarray(q.scales.T.astype(np.float32))}
    if not q.symmetric:
        per_byte = 8 // q.bits
        zp_cols = -(-blocks // per_byte) * per_byte
        zeros = np.full((N, zp_cols), 2 ** (q.bits - 1), dtype=np.uint8)
        zeros[:, :blocks] = q.zeros.T
        out["zero_points"] = pack_rows(zeros, q.bits)
    return out


def packed_prefix(weight: str, bits: int, block_size: int) -> str:
    """Returns the name prefix of the initializers that pack float initializer `weight`
    (B is `<prefix>_B`)."""
    return f"{weight}_q{bits}b{block_size}"


def matmul_nbits_node(node, q: GroupQuantized, block_size: int, accuracy_level: int | None = None):
    """Returns (MatMulNBits NodeProto replacing MatMul `node`, [its new initializers]) for
    the quantized weight `q` of node.input[1]."""
    from onnx import helper, numpy_helper

    weight = node.input[1]
    prefix = packed_prefix(weight, q.bits, block_size)
    arrays = matmul_nbits_inputs(q, block_size)
    inits = [numpy_helper.from_array(arr, f"{prefix}_{key}") for key, arr in arrays.items()]
    K, N = q.shape
    attrs = {"K": K, "N": N, "bits": q.bits, "block_size": block_size}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    new = helper.make_node("MatMulNBits", [node.input[0]] + [i.name for i in inits], list(node.output),
                           name=(node.name or weight) + prefix[len(weight):], domain="com.microsoft", **attrs)
    return new, inits


def set_qdq_weight(graph, weight: str, q: GroupQuantized) -> None:
    """Overwrites the INT8 per-channel weight that quantize_static wrote for the float
    initializer `weight` ([K, N], DequantizeLinear axis 1) with the codes and scales of `q`
    (one group of all K, 8 bits, symmetric); raises ValueError when the graph has no such
    weight or it is laid out otherwise."""
    from onnx import numpy_helper

    if not (q.bits == 8 and q.symmetric and q.group_size == q.shape[0]):
        raise ValueError(f"{weight}: a QDQ weight needs 8-bit symmetric per-channel codes")
    inits = {i.name: i for i in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == f"{weight}_quantized"]
    if len(dq) != 1 or len(dq[0].input) < 3:
        raise ValueError(f"{weight}: expected one DequantizeLinear of {weight}_quantized with a zero point, found {len(dq)}")
    data, scale, zero = (inits[name] for name in dq[0].input[:3])
    axis = next((a.i for a in dq[0].attribute if a.name == "axis"), 1)
    if tuple(data.dims) != q.shape or axis != 1 or tuple(scale.dims) != (q.shape[1],):
        raise ValueError(f"{weight}: quantized weight {tuple(data.dims)} axis {axis}, expected {q.shape} axis 1")
    offset = 2 ** (q.bits - 1)  # unsigned codes around 128 are signed codes around 0
    data.CopyFrom(numpy_helper.from_array((q.codes.astype(np.int16) - offset).astype(np.int8), data.name))
    scale.CopyFrom(numpy_helper.from_array(q.scales[0].astype(np.float32), scale.name))
    zero.CopyFrom(numpy_helper.from_array((q.zeros[0] - offset).astype(np.int8), zero.name))


def runtime_weight(graph, node, rows_per_run: int = 1024) -> np.ndarray:
    """Returns the float32 [K, N] weight onnxruntime multiplies by in `node` of `graph`
    (a MatMulNBits, or a DequantizeLinear of a weight): the node run alone, on the CPU, on
    slices of an identity input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inits = {i.name: i for i in graph.initializer}
    used = [inits[name] for name in node.input if name in inits]
    is_matmul = node.op_type == "MatMulNBits"
    inputs = [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, ["rows", "K"])] if is_matmul else []
    out = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
    one = helper.make_graph([node], "one_node", inputs, [out], initializer=used)
    from ..models.onnx_export import cpu_session_options

    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    options = cpu_session_options()  # one per packed weight, in every worker at once
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # IR 10 is what opset 21 needs; a newer onnx package would stamp an IR version the
    # installed onnxruntime may not read yet
    session = ort.InferenceSession(helper.make_model(one, opset_imports=opsets, ir_version=10).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    if not is_matmul:
        return session.run(None, {})[0]
    K = next(a.i for a in node.attribute if a.name == "K")
    eye = np.eye(K, dtype=np.float32)
    return np.concatenate([session.run(None, {node.input[0]: eye[r:r + rows_per_run]})[0]
                           for r in range(0, K, rows_per_run)])
