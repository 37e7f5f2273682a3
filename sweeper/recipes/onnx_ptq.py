"""Post-training quantization of an ONNX causal LM with onnxruntime.quantization.

One config, `OnnxPTQConfig`, whose `algorithm` picks the method:

- `fp32`: the exported graph as it is (the reference row).
- `int8_qdq`: static INT8 QDQ (`quantize_static`): weights symmetric per-channel INT8,
  activations asymmetric UINT8 calibrated on WikiText-2 training text, MatMul/Gemm only.
- `rtn`, `gptq`, `hqq`: weight-only quantization of the MatMul weights with
  `MatMulNBitsQuantizer` into `com.microsoft.MatMulNBits` nodes, `bits` per weight in
  blocks of `block_size` input channels. RTN and GPTQ go through onnxruntime's Intel Neural
  Compressor pipeline (same quantization grid, so they compare fairly), with GPTQ's weight
  update replaced by the paper's (gptq_update.py: onnxruntime 1.32's propagates no error);
  HQQ is onnxruntime's own.
- `gptq` at 8 bits with `weight_format="qdq"`: GPTQ's 8-bit per-channel weights, then the
  static INT8 QDQ pass over the whole graph (the "QDQ + GPTQ 8-bit" recipe).

Which combinations onnxruntime supports is checked when the config is built.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import check_bool, check_choice, check_float, check_int
from ..errors import ConfigError
from ..jobs import Quantized
from ..registry import RECIPES

WHERE = "recipe onnx_ptq"
ALGORITHMS = ("fp32", "int8_qdq", "rtn", "gptq", "hqq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")
WEIGHT_FORMATS = ("matmulnbits", "qdq")
# What onnxruntime can write: (algorithm, bits) -> weight formats.
SUPPORTED = {
    ("int8_qdq", 8): ("qdq",),
    ("rtn", 4): ("matmulnbits",),
    ("rtn", 8): ("matmulnbits",),
    ("gptq", 4): ("matmulnbits",),
    ("gptq", 8): ("qdq",),
    ("hqq", 4): ("matmulnbits",),
}


@dataclass(frozen=True)
class OnnxPTQConfig:
    """An ONNX post-training quantization recipe (see the module docstring).

    bits: weight bits (None: 8 for int8_qdq, 4 for weight-only; must be None for fp32).
    block_size: input channels per weight block for MatMulNBits (None for per-channel QDQ).
    weight_format: "matmulnbits" or "qdq" (None: the one the algorithm and bits allow).
    symmetric: symmetric weight blocks (weight-only; None: symmetric for RTN and GPTQ,
    asymmetric for HQQ, which supports nothing else).
    act_order, damp_percent: GPTQ's column reordering and Hessian damping (fraction of the
    mean diagonal); other algorithms ignore them, so one search space can hold them all. calibration_method: activation ranges for QDQ. calibration_samples /
    calibration_seq_len: token blocks of training text (seq_len None: min(model max, 512)).
    matmul_const_b_only: QDQ quantizes only MatMuls with a constant weight (attention
    score products stay in float, as transformer INT8 recipes do).
    accuracy_level: MatMulNBits compute type (None: onnxruntime's default).
    """

    algorithm: str = "int8_qdq"
    bits: int | None = None
    block_size: int | None = None
    weight_format: str | None = None
    symmetric: bool | None = None
    act_order: bool = False
    damp_percent: float = 0.01
    calibration_method: str = "minmax"
    calibration_samples: int = 32
    calibration_seq_len: int | None = None
    matmul_const_b_only: bool = True
    accuracy_level: int | None = None
    seed: int = 0

    model_format = "onnx"  # recipes of this config take and return OnnxModel

    def __post_init__(self):
        check_choice(WHERE, "algorithm", self.algorithm, ALGORITHMS)
        if self.bits is not None:
            check_choice(WHERE, "bits", self.bits, (4, 8))
        if self.block_size is not None:
            check_choice(WHERE, "block_size", self.block_size, BLOCK_SIZES)
        if self.weight_format is not None:
            check_choice(WHERE, "weight_format", self.weight_format, WEIGHT_FORMATS)
        if self.symmetric is not None:
            check_bool(WHERE, "symmetric", self.symmetric)
        check_bool(WHERE, "act_order", self.act_order)
        check_float(WHERE, "damp_percent", self.damp_percent, 0.0, 1.0, lo_open=True)
        check_choice(WHERE, "calibration_method", self.calibration_method, CALIBRATION_METHODS)
        check_int(WHERE, "calibration_samples", self.calibration_samples, 1, 100_000)
        if self.calibration_seq_len is not None:
            check_int(WHERE, "calibration_seq_len", self.calibration_seq_len, 2, 1 << 20)
        check_bool(WHERE, "matmul_const_b_only", self.matmul_const_b_only)
        if self.accuracy_level is not None:
            check_choice(WHERE, "accuracy_level", self.accuracy_level, (0, 1, 2, 3, 4))
        check_int(WHERE, "seed", self.seed, 0, 2**31 - 1)
        self._check_combination()

    def _check_combination(self) -> None:
        combo = f"algorithm={self.algorithm} bits={self.bits} block_size={self.block_size}"
        if self.algorithm == "fp32":
            if self.bits is not None or self.block_size is not None or self.weight_format is not None:
                raise ConfigError(WHERE, "combination", combo, "fp32 with bits, block_size and weight_format unset")
            return
        bits, fmt = self.resolved_bits, self.resolved_format
        formats = SUPPORTED.get((self.algorithm, bits))
        if formats is None:
            ok = ", ".join(f"{a} {b}-bit" for a, b in SUPPORTED)
            raise ConfigError(WHERE, "combination", combo, f"one onnxruntime can write: {ok}")
        if fmt not in formats:
            raise ConfigError(WHERE, "combination", f"{combo} weight_format={fmt}",
                              f"weight_format {' or '.join(formats)} for {self.algorithm} {bits}-bit"
                              + (" (onnxruntime packs only 4-bit GPTQ into MatMulNBits)" if self.algorithm == "gptq" else ""))
        if fmt == "qdq" and self.block_size is not None:
            raise ConfigError(WHERE, "combination", combo, "block_size unset: QDQ weights are per-channel")
        if fmt == "matmulnbits" and self.block_size is None:
            raise ConfigError(WHERE, "combination", combo, f"a block_size for MatMulNBits, one of {BLOCK_SIZES}")
        if self.algorithm == "hqq" and self.symmetric is True:
            raise ConfigError(WHERE, "combination", f"{combo} symmetric=True", "symmetric=False (HQQ is asymmetric)")

    @property
    def resolved_bits(self) -> int | None:
        """Returns the weight bits this config quantizes to (None for fp32)."""
        if self.algorithm == "fp32":
            return None
        return self.bits or (8 if self.algorithm == "int8_qdq" else 4)

    @property
    def resolved_symmetric(self) -> bool:
        """Returns whether weight blocks are symmetric (no zero points)."""
        return self.symmetric if self.symmetric is not None else self.algorithm in ("rtn", "gptq")

    @property
    def resolved_format(self) -> str | None:
        """Returns "qdq", "matmulnbits", or None for fp32."""
        if self.algorithm == "fp32":
            return None
        if self.weight_format:
            return self.weight_format
        return SUPPORTED.get((self.algorithm, self.resolved_bits), ("matmulnbits",))[0]

    @property
    def needs_calibration(self) -> bool:
        """Returns whether the recipe runs the model on calibration text."""
        return self.algorithm in ("int8_qdq", "gptq")

    def describe(self) -> str:
        """Returns a short label such as 'MatMulNBits GPTQ 4-bit, block 128'."""
        if self.algorithm == "fp32":
            return "FP32"
        if self.algorithm == "int8_qdq":
            return "INT8 QDQ"
        if self.resolved_format == "qdq":
            return f"QDQ + {self.algorithm.upper()} {self.resolved_bits}-bit"
        return f"MatMulNBits {self.algorithm.upper()} {self.resolved_bits}-bit, block {self.block_size}"


class _TokenReader:
    """An onnxruntime CalibrationDataReader over fixed token blocks: {"input_ids": (1, L)}."""

    def __new__(cls, blocks):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self, rows):
                self.rows = [r.reshape(1, -1) for r in rows]
                self.i = 0

            def get_next(self):
                if self.i >= len(self.rows):
                    return None
                self.i += 1
                return {"input_ids": self.rows[self.i - 1]}

            def rewind(self):
                self.i = 0

        import numpy as np

        return Reader([np.asarray(b, dtype=np.int64) for b in blocks])


def _calibration_blocks(model, config: OnnxPTQConfig, ctx):
    from .calibration import pick_blocks, token_blocks

    seq_len = config.calibration_seq_len or min(model.max_positions, 512)
    if seq_len > model.max_positions:
        raise ConfigError(WHERE, "calibration_seq_len", seq_len, f"at most the model's {model.max_positions} positions")
    return pick_blocks(token_blocks(ctx, seq_len, WHERE), config.calibration_samples, config.seed).numpy()


def _matmul_names(model_proto) -> list[str]:
    inits = {i.name for i in model_proto.graph.initializer}
    return [n.name for n in model_proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits]


def _static_qdq(src: Path, dst: Path, config: OnnxPTQConfig, blocks) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's recommended pre-processing (shape inference, graph optimisation)
    pre = dst.with_name("preprocessed.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    src = pre

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    quantize_static(
        str(src), str(dst), _TokenReader(blocks),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method[config.calibration_method],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                       "MatMulConstBOnly": config.matmul_const_b_only},
    )
    pre.unlink()


def _check_zero_point_packing(proto, config: OnnxPTQConfig, block: int) -> None:
    """Raises ConfigError for the one case onnxruntime 1.32's RTN/GPTQ packer gets wrong:
    asymmetric 4-bit weights with an odd number of blocks along K (it packs two zero points
    per byte across rows, then cannot reshape them)."""
    if config.algorithm not in ("rtn", "gptq") or config.resolved_bits != 4 or config.resolved_symmetric or block <= 0:
        return
    inits = {i.name: i for i in proto.graph.initializer}
    names = set(_matmul_names(proto))
    for n in proto.graph.node:
        if n.name in names:
            k = inits[n.input[1]].dims[0]
            if -(-k // block) % 2:
                raise ConfigError(WHERE, "combination", f"algorithm={config.algorithm} bits=4 block_size={block} symmetric=False",
                                  f"symmetric=True or a block_size giving an even block count (weight {n.input[1]} "
                                  f"has {k} input channels; onnxruntime's packer mispacks the zero points)")


def _weight_only(src: Path, dst: Path, config: OnnxPTQConfig, blocks) -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    proto = onnx.load(str(src))
    bits = config.resolved_bits
    # onnxruntime's RTN/GPTQ templates say 4 bits; other widths go in per node.
    per_node = {name: {"bits": bits} for name in _matmul_names(proto)} if bits != 4 else None
    if config.algorithm == "rtn":
        algo = mnq.RTNWeightOnlyQuantConfig()
    elif config.algorithm == "gptq":
        algo = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_TokenReader(blocks), percdamp=config.damp_percent,
                                             block_size=128, actorder=config.act_order, perchannel=True)
    else:
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=bits)
    if per_node:
        algo.customized_weight_config = per_node
    # QDQ + GPTQ: GPTQ over whole input columns (per-channel) at 8 bits; the QDQ pass follows.
    block = config.block_size if config.resolved_format == "matmulnbits" else -1
    if per_node and block == -1:
        for cfg in per_node.values():
            cfg["group_size"] = -1
    _check_zero_point_packing(proto, config, block)
    quantizer = mnq.MatMulNBitsQuantizer(proto, bits=bits, block_size=block if block > 0 else 128,
                                         is_symmetric=config.resolved_symmetric, accuracy_level=config.accuracy_level,
                                         algo_config=algo)
    import contextlib
    import io

    from .gptq_update import patched_onnxruntime_gptq

    # onnxruntime's GPTQ port propagates no error (see gptq_update.py): use the paper's update
    fix = patched_onnxruntime_gptq() if config.algorithm == "gptq" else contextlib.nullcontext()
    with contextlib.redirect_stdout(io.StringIO()), fix:  # INC prints a per-node progress bar
        quantizer.process()
    from ..models.onnx_export import save_onnx

    save_onnx(quantizer.model.model, dst)


def quantize_onnx(model, config: OnnxPTQConfig, ctx) -> Quantized:
    """Returns Quantized(OnnxModel of the quantized graph in a fresh folder of ctx.workdir,
    artifacts={"quantization.json": what was done, with the graph's op counts}).

    The input model (the worker's cached export) is never modified."""
    import json
    import logging

    t0 = time.perf_counter()
    import tempfile

    out_dir = Path(tempfile.mkdtemp(prefix=f"onnx_ptq-{config.algorithm}-{config.resolved_bits}-{config.block_size}-",
                                    dir=ctx.workdir))
    dst = out_dir / "model.onnx"
    if config.algorithm == "fp32":
        result = model
    else:
        blocks = _calibration_blocks(model, config, ctx) if config.needs_calibration else None
        ctx.log(f"onnx_ptq: {config.describe()}"
                + (f", calibration {len(blocks)} x {blocks.shape[1]} tokens ({config.calibration_method})" if blocks is not None else ""))
        ctx.check_cancelled()
        # onnxruntime's quantizers log every node at INFO; keep the trial's log readable.
        logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
        if config.algorithm == "int8_qdq":
            _static_qdq(model.path, dst, config, blocks)
        elif config.resolved_format == "qdq":  # QDQ + GPTQ 8-bit
            mid = out_dir.parent / (out_dir.name + "-gptq")
            mid.mkdir()
            _weight_only(model.path, mid / "model.onnx", config, blocks)
            ctx.check_cancelled()
            _static_qdq(mid / "model.onnx", dst, config, blocks)
            import shutil

            shutil.rmtree(mid)
        else:
            _weight_only(model.path, dst, config, blocks)
        result = model.derived(dst)
    seconds = time.perf_counter() - t0
    ops = result.op_counts()
    info = {"recipe": config.describe(), "quantize_seconds": round(seconds, 2), "op_counts": ops,
            "weight_format": config.resolved_format, "bits": config.resolved_bits, "block_size": config.block_size,
            "symmetric": config.resolved_symmetric if config.algorithm not in ("fp32", "int8_qdq") else None}
    ctx.log(f"onnx_ptq: {config.describe()} done in {seconds:.1f}s, {result.size_mb():.2f} MB; "
            f"MatMulNBits {ops.get('MatMulNBits', 0)}, QuantizeLinear {ops.get('QuantizeLinear', 0)}, "
            f"DequantizeLinear {ops.get('DequantizeLinear', 0)}, MatMul {ops.get('MatMul', 0)}")
    return Quantized(result, artifacts={"quantization.json": json.dumps(info, indent=2).encode()},
                     info={"quantize_seconds": round(seconds, 2)})


RECIPES.register("onnx_ptq", quantize_onnx)(OnnxPTQConfig)
