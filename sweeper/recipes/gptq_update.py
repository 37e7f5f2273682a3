"""Group-wise weight quantization on an integer grid: round-to-nearest and GPTQ.

Both return the *integer codes* with their per-group scales and zero points
(`GroupQuantized`), never fake-quantized floats: the packer (matmul_nbits.py) writes those
codes into the graph as they are, so what the runtime dequantizes is exactly what the
algorithm chose. (onnxruntime 1.32's pipeline passed GPTQ's floats to a packer that
computed a new grid from their min/max and rounded again: with the symmetric scheme the
new scale is 16s/15 and ~88% of the weights moved, so its "GPTQ" graphs were RTN graphs.
Its GPTQ port also propagates no error: it reads the zero half of the Cholesky factor.)

Weights are [K, N] (input channels first, as ONNX MatMul's B); a group is `group_size`
consecutive input channels of one output column. The grid is GPTQ's reference one:
symmetric scale = 2 max|w| / (2^bits - 1) with zero point 2^(bits-1); asymmetric
scale = (max - min) / (2^bits - 1), zero = round(-min / scale); the range always holds 0.

GPTQ is Frantar et al. 2022, Algorithm 1 (lazy batch updates, Cholesky of H^-1). With
`act_order` the columns are visited by decreasing Hessian diagonal while the groups stay
contiguous in the original order ("static groups", as AutoGPTQ does it), so the groups
line up with MatMulNBits' contiguous blocks and no `g_idx` is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupQuantized:
    """A [K, N] weight on an integer grid.

    codes: uint8 [K, N], each in [0, 2^bits - 1]. scales: float64 [G, N] and zeros: int
    [G, N] for the G = ceil(K / group_size) groups of input channels.
    weight = scales[k // group_size, n] * (codes[k, n] - zeros[k // group_size, n]).
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    group_size: int
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        """Returns (K, N)."""
        return self.codes.shape

    def group_of_rows(self) -> np.ndarray:
        """Returns the group index (int [K]) of each input channel."""
        return np.arange(self.codes.shape[0]) // self.group_size

    def dequantize(self) -> np.ndarray:
        """Returns the float32 [K, N] weight the codes stand for (scales rounded to float32
        first, as a graph stores them)."""
        g = self.group_of_rows()
        scales = self.scales.astype(np.float32)[g]
        return (scales * (self.codes.astype(np.float32) - self.zeros[g].astype(np.float32))).astype(np.float32)


def group_grid(w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scale float64 [N], zero point int [N]) of the grid for the rows `w`
    ([rows, N], one group of input channels): GPTQ's reference grid (module docstring)."""
    maxq = 2**bits - 1
    xmin = np.minimum(w.min(axis=0), 0.0)
    xmax = np.maximum(w.max(axis=0), 0.0)
    if symmetric:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(both_zero, -1.0, xmin), np.where(both_zero, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    # scales are stored as float32 in the graph: round here so the codes are chosen on that grid
    scale = scale.astype(np.float32).astype(np.float64)
    if symmetric:
        zero = np.full(scale.shape, 2 ** (bits - 1), dtype=np.int64)
    else:
        zero = np.clip(np.round(-xmin / scale), 0, maxq).astype(np.int64)
    return scale, zero


def _round_to_grid(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: int) -> np.ndarray:
    return np.clip(np.round(w / scale) + zero, 0, maxq)


def rtn(W, bits: int = 4, group_size: int = 32, symmetric: bool = True) -> GroupQuantized:
    """Returns round-to-nearest codes of W ([K, N]) on the grid of each group of
    `group_size` input channels (-1: one group of all K)."""
    W = np.asarray(W, dtype=np.float64)
    K, N = W.shape
    group = K if group_size == -1 else group_size
    maxq = 2**bits - 1
    n_groups = -(-K // group)
    codes = np.zeros((K, N), dtype=np.uint8)
    scales, zeros = np.zeros((n_groups, N)), np.zeros((n_groups, N), dtype=np.int64)
    for g in range(n_groups):
        rows = slice(g * group, min((g + 1) * group, K))
        scales[g], zeros[g] = group_grid(W[rows], bits, symmetric)
        codes[rows] = _round_to_grid(W[rows], scales[g], zeros[g], maxq)
    return GroupQuantized(codes, scales, zeros, bits, group, symmetric)


def gptq(W, H, bits: int = 4, group_size: int = 32, symmetric: bool = True, blocksize: int = 128,
         percdamp: float = 0.01, act_order: bool = False) -> GroupQuantized:
    """Returns GPTQ's codes for W ([K, N]) given the layer-input Hessian H ([K, K],
    proportional to X^T X over calibration tokens), `bits` per weight in groups of
    `group_size` input channels (-1: all K). `percdamp` adds that fraction of the mean
    diagonal to H's diagonal; `blocksize` is the lazy-update width (it changes speed only)."""
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    K, N = W.shape
    group = K if group_size == -1 else group_size
    maxq = 2**bits - 1
    n_groups = -(-K // group)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    scales, zeros = np.zeros((n_groups, N)), np.zeros((n_groups, N), dtype=np.int64)
    if act_order:
        # static groups: every group's grid from the original weights, before any update
        for g in range(n_groups):
            scales[g], zeros[g] = group_grid(W[g * group:(g + 1) * group], bits, symmetric)
        perm = np.argsort(np.diag(H), kind="stable")[::-1]
    else:
        perm = np.arange(K)
    W, H = W[perm], H[perm][:, perm]
    H[np.arange(K), np.arange(K)] += percdamp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H^-1 = U^T U
    codes = np.zeros((K, N), dtype=np.uint8)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1, U1 = W[i1:i2].copy(), U[i1:i2, i1:i2]
        Err1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            col = perm[i1 + i]  # the original input channel
            g = col // group
            if not act_order and col % group == 0:
                # as the paper's code: the grid from W as it stood when this block began
                scales[g], zeros[g] = group_grid(W[i1 + i:i1 + i + group], bits, symmetric)
            w = W1[i]
            c = _round_to_grid(w, scales[g], zeros[g], maxq)
            codes[col] = c
            err = (w - scales[g] * (c - zeros[g])) / U1[i, i]
            W1[i:] -= np.outer(U1[i, i:], err)  # row i of the upper factor: the later columns
            Err1[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ Err1
    return GroupQuantized(codes, scales, zeros, bits, group, symmetric)
