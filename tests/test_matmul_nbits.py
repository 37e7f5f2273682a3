"""The packer writes integer codes into ONNX initializers that onnxruntime itself reads
back as exactly the quantizer's weights: MatMulNBits at 2, 4 and 8 bits (symmetric and
asymmetric, odd block counts, K not a multiple of the block) and QDQ INT8 weights."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from sweeper.recipes.gptq_update import gptq, rtn
from sweeper.recipes.matmul_nbits import matmul_nbits_node, pack_rows, runtime_weight, set_qdq_weight


def _weights(K, N, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(256, K)) @ rng.normal(size=(K, K)) * 0.2
    return rng.normal(size=(K, N)).astype(np.float32), X.T @ X


def test_pack_rows_puts_the_first_code_in_the_low_bits():
    assert pack_rows(np.array([[1, 2]]), 4).tolist() == [[0x21]]
    assert pack_rows(np.array([[1, 2, 3, 0]]), 2).tolist() == [[0b00111001]]
    assert pack_rows(np.array([[7, 200]]), 8).tolist() == [[7, 200]]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("K,N,block,act_order", [(256, 24, 32, False), (96, 16, 64, True), (200, 8, 16, True)])
def test_onnxruntime_reads_back_the_quantizers_weights_exactly(bits, symmetric, K, N, block, act_order):
    W, H = _weights(K, N)
    q = gptq(W, H, bits=bits, group_size=block, symmetric=symmetric, act_order=act_order)
    node, inits = matmul_nbits_node(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), q, block)
    assert ("zero_points" in node.input[3] if len(node.input) > 3 else False) == (not symmetric)
    graph = helper.make_graph([node], "g", [], [], initializer=inits)
    got = runtime_weight(graph, node)
    assert got.dtype == np.float32 and np.array_equal(got, q.dequantize())


def test_qdq_weight_is_overwritten_with_the_codes():
    K, N = 64, 12
    W, H = _weights(K, N, seed=1)
    q = gptq(W, H, bits=8, group_size=-1, symmetric=True)
    inits = [numpy_helper.from_array(np.zeros((K, N), np.int8), "w_quantized"),
             numpy_helper.from_array(np.ones(N, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero_point")]
    dq = helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], name="dq", axis=1)
    graph = helper.make_graph([dq], "g", [], [helper.make_tensor_value_info("w_dq", TensorProto.FLOAT, None)],
                              initializer=inits)
    set_qdq_weight(graph, "w", q)
    assert np.array_equal(runtime_weight(graph, dq), q.dequantize())
    with pytest.raises(ValueError, match="8-bit symmetric per-channel"):
        set_qdq_weight(graph, "w", rtn(W, 4, 32))
