"""GPTQ's weight update (Frantar et al. 2022, Algorithm 1) for onnxruntime's weight layout.

onnxruntime 1.32 quantizes with a port of Intel Neural Compressor's GPTQ
(`onnxruntime.quantization.neural_compressor.weight_only.gptq`). Its weights are [K, N]
(input channels first), and the port propagates each column's error with Hinv[i:, i] and
Hinv[i2:, i1:i2]: parts of the *upper* Cholesky factor that are all zero. No error is
propagated, so its "GPTQ" is round-to-nearest on GPTQ's grid (tests/test_gptq.py shows the
same layer error as RTN). `gptq` here is the same algorithm with the factor's rows, as
the paper has it; `patched_onnxruntime_gptq()` puts it in place of the port while
onnxruntime's own pipeline (Hessians from calibration data, MatMulNBits packing) runs.
"""
from __future__ import annotations

import contextlib

import numpy as np


def _grid(w: np.ndarray, bits: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scale, zero point), each (N, 1), of the per-output-column grid for the rows
    `w` (group_size x N): the port's own grid, so only the update differs from it."""
    maxq = 2**bits - 1
    xmin = np.minimum(w.min(axis=0), 0.0)
    xmax = np.maximum(w.max(axis=0), 0.0)
    if scheme == "sym":
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(both_zero, -1.0, xmin), np.where(both_zero, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = np.full(scale.shape, (maxq + 1) / 2) if scheme == "sym" else np.round(-xmin / scale)
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


def gptq(W, H, num_bits=4, group_size=32, scheme="asym", blocksize=128, percdamp=0.01, actorder=False,
         mse=False, perchannel=True):
    """Returns the fake-quantized weight (same shape as W, [K, N]) that GPTQ picks for the
    layer input Hessian H ([K, K], 2 X^T X / n), `num_bits` per weight in groups of
    `group_size` input channels (-1: all K). Signature as onnxruntime's port; `mse` and
    `perchannel=False` are not supported (onnxruntime's MatMulNBits path uses neither)."""
    if mse or not perchannel:
        raise ValueError("gptq: mse=True / perchannel=False are not supported by this update")
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    K = W.shape[0]
    group = K if group_size == -1 else group_size
    maxq = 2**num_bits - 1
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    perm = np.argsort(np.diag(H))[::-1] if actorder else np.arange(K)
    W, H = W[perm], H[perm][:, perm]
    H[np.arange(K), np.arange(K)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H^-1 = U^T U
    Q = np.zeros_like(W)
    scale = zero = None
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1, U1 = W[i1:i2].copy(), U[i1:i2, i1:i2]
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:
                # as the paper's code: the group's grid from W with the earlier blocks' updates
                scale, zero = _grid(W[i1 + i:i1 + i + group], num_bits, scheme)
            w = W1[i]
            q = (scale * (np.clip(np.round(w[:, None] / scale) + zero, 0, maxq) - zero)).ravel()
            Q[i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[i:] -= np.outer(U1[i, i:], err)  # row i of the upper factor: the later columns
            Err1[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ Err1
    return Q[np.argsort(perm)].astype(np.float32)


@contextlib.contextmanager
def patched_onnxruntime_gptq():
    """Within the block, onnxruntime's MatMulNBits GPTQ pipeline uses `gptq` above."""
    from unittest import mock

    from onnxruntime.quantization.neural_compressor import weight_only

    with mock.patch.object(weight_only, "gptq", gptq):
        yield
