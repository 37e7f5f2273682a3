"""Post-training quantization of an ONNX causal LM with onnxruntime.quantization.

One config, `OnnxPTQConfig`, whose `algorithm` picks the method:

- `fp32`: the exported graph as it is (the reference row).
- `int8_qdq`: static INT8 QDQ (`quantize_static`): weights symmetric per-channel INT8,
  activations asymmetric UINT8 calibrated on WikiText-2 training text, MatMul/Gemm only.
- `rtn`, `gptq`: weight-only quantization of the MatMul weights into
  `com.microsoft.MatMulNBits` nodes, `bits` per weight in blocks of `block_size` input
  channels, on one grid (so they compare fairly), quantized and packed by us
  (onnx_weight_only.py: onnxruntime 1.32's pipeline re-rounded GPTQ's weights into RTN);
  every packed weight is read back through onnxruntime and checked bit for bit.
- `hqq`: onnxruntime's own `MatMulNBitsQuantizer` HQQ.
- `gptq` at 8 bits with `weight_format="qdq"`: GPTQ's 8-bit per-channel weights, then the
  static INT8 QDQ pass over the whole graph, whose INT8 weights are then overwritten with
  GPTQ's own codes and scales (the "QDQ + GPTQ 8-bit" recipe).

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
from .layer_choice import check_layer_fields, describe_layer_choice, has_layer_choice, layer_bits

WHERE = "recipe onnx_ptq"
ALGORITHMS = ("fp32", "int8_qdq", "rtn", "gptq", "hqq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")
WEIGHT_FORMATS = ("matmulnbits", "qdq")
# What onnxruntime can write: (algorithm, bits) -> weight formats.
SUPPORTED = {
    ("int8_qdq", 8): ("qdq",),
    ("rtn", 2): ("matmulnbits",),
    ("rtn", 4): ("matmulnbits",),
    ("rtn", 8): ("matmulnbits",),
    ("gptq", 2): ("matmulnbits",),
    ("gptq", 4): ("matmulnbits",),
    ("gptq", 8): ("qdq", "matmulnbits"),
    ("hqq", 4): ("matmulnbits",),
}
# Config fields that name layers (module names of the model's weight MatMuls)
# MatMulNBits' CPU kernel reads 2, 4 and 8 bits (tests/test_matmul_nbits.py); 3 does not pack into bytes.
BITS = (2, 4, 8)


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
    layers: quantize only these layers (module names, as `sweeper sensitivity` lists them,
    e.g. "model.decoder.layers.0.fc1"; None: every weight MatMul). float_layers: layers
    kept in float. sensitivity_ranking: layers, most sensitive first (the sweep's
    sensitivity stage fills it); protected_layers: how many of its first layers are kept at
    protected_bits (None: in float) while the rest use `bits`: mixed precision, searchable.
    These four are for RTN and GPTQ into MatMulNBits (per-layer widths in one graph).
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
    layers: tuple | None = None
    float_layers: tuple = ()
    sensitivity_ranking: tuple = ()
    protected_layers: int = 0
    protected_bits: int | None = None

    model_format = "onnx"  # recipes of this config take and return OnnxModel

    def __post_init__(self):
        check_choice(WHERE, "algorithm", self.algorithm, ALGORITHMS)
        if self.bits is not None:
            check_choice(WHERE, "bits", self.bits, BITS)
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
        if has_layer_choice(self) and (self.algorithm not in ("rtn", "gptq") or self.resolved_format != "matmulnbits"):
            raise ConfigError(WHERE, "layers", f"algorithm={self.algorithm} weight_format={self.resolved_format}",
                              "per-layer choices (layers, float_layers, protected_layers, protected_bits) with "
                              "algorithm rtn or gptq into MatMulNBits")
        check_layer_fields(self, WHERE, self.resolved_bits, BITS)

    def layer_bits(self, layers: list[str]) -> dict[str, int]:
        """Returns {layer: weight bits} of the `layers` (module names, all of the graph's) to
        quantize (layer_choice.layer_bits at this config's bits)."""
        return layer_bits(self, WHERE, layers, self.resolved_bits)

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
                              f"weight_format {' or '.join(formats)} for {self.algorithm} {bits}-bit")
        if fmt == "qdq" and self.block_size is not None:
            raise ConfigError(WHERE, "combination", combo, "block_size unset: QDQ weights are per-channel")
        if fmt == "matmulnbits" and self.block_size is None:
            raise ConfigError(WHERE, "combination", combo, f"a block_size for MatMulNBits, one of {BLOCK_SIZES}")
        if fmt == "qdq" and self.algorithm == "gptq" and self.symmetric is False:
            raise ConfigError(WHERE, "combination", f"{combo} weight_format=qdq symmetric=False",
                              "symmetric=True or unset (QDQ weights are symmetric INT8)")
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
        return f"MatMulNBits {self.algorithm.upper()} {self.resolved_bits}-bit, block {self.block_size}" \
            + describe_layer_choice(self)


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


def _hqq(src: Path, dst: Path, config: OnnxPTQConfig) -> None:
    import contextlib
    import io

    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    from ..models.onnx_export import save_onnx

    algo = mnq.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=config.resolved_bits)
    quantizer = mnq.MatMulNBitsQuantizer(onnx.load(str(src)), bits=config.resolved_bits, block_size=config.block_size,
                                         is_symmetric=False, accuracy_level=config.accuracy_level, algo_config=algo)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a per-node progress bar
        quantizer.process()
    save_onnx(quantizer.model.model, dst)


def _own_weight_only(src: Path, dst: Path, config: OnnxPTQConfig, blocks, ctx) -> dict:
    """RTN/GPTQ, quantized and packed by onnx_weight_only; returns what goes in the
    recipe's info (per-layer output errors, weights verified)."""
    import shutil

    import numpy as np
    import onnx

    from ..models.onnx_export import save_onnx
    from . import onnx_weight_only as wo

    proto = onnx.load(str(src))
    layers = wo.weight_layers(proto.graph)
    by_layer = config.layer_bits(list(layers))
    bits_of = {layers[n].input[1]: b for n, b in by_layer.items()}
    hessians = None
    if config.algorithm == "gptq" and bits_of:
        hessians = _gptq_hessians(src, proto, [layers[n].input[0] for n in by_layer], blocks, ctx)
        ctx.check_cancelled()
    elif config.algorithm == "gptq" and config.layers == ():
        # quantizes nothing: the sensitivity stage's listing job, run on every worker first;
        # it fills the worker's Hessian cache so its one-layer jobs all cost the same
        _gptq_hessians(src, proto, [], blocks, ctx, cache_only=True)
    qdq = config.resolved_format == "qdq"
    result = wo.quantize_weights(proto, config.algorithm, config.resolved_bits, -1 if qdq else config.block_size,
                                 config.resolved_symmetric, hessians=hessians, act_order=config.act_order,
                                 damp_percent=config.damp_percent, bits_of=bits_of, log=ctx.log)
    ctx.check_cancelled()
    if qdq:
        # calibrate activations on the quantized weights, then put GPTQ's own codes in
        wo.write_dequantized_weights(proto, result)
        mid = save_onnx(proto, dst.parent.parent / (dst.parent.name + "-gptq") / "model.onnx")
        _static_qdq(mid, dst, config, blocks)
        shutil.rmtree(mid.parent)
        proto = onnx.load(str(dst))
        wo.write_qdq_weights(proto, result)
    else:
        wo.write_matmul_nbits(proto, result, config.block_size, config.accuracy_level)
    checked = wo.verify_packed(proto, result)
    save_onnx(proto, dst)
    errors = result.layer_error
    info = {"weights_verified": checked, "layers": list(layers), "layer_bits": by_layer}
    if errors:
        ratio = [e["gptq"] / e["rtn"] for e in errors.values() if e["rtn"] > 0]
        info["layer_error"] = errors
        info["layer_error_vs_rtn_mean"] = round(float(np.mean(ratio)), 4)
        ctx.log(f"gptq: layer output error {info['layer_error_vs_rtn_mean']:.3f}x RTN's on average "
                f"over {len(ratio)} weights; {checked} packed weights verified")
    return info


# Hessians of every MatMul input stay on the worker across jobs when they fit in this
# (OPT reference models: tens of MB); a sensitivity stage's one-layer jobs then skip the
# calibration pass. Larger models compute what each job needs, every time.
HESSIAN_CACHE_BYTES = 1 << 30


def _gptq_hessians(src: Path, proto, needed: list[str], blocks, ctx, cache_only: bool = False) -> dict:
    """Returns {MatMul input name: Hessian} for at least the `needed` inputs, from the
    worker's cache when the graph's Hessians all fit HESSIAN_CACHE_BYTES (`cache_only`:
    only fills that cache; returns {} when they do not fit)."""
    import hashlib

    from . import onnx_weight_only as wo

    every = sorted({n.input[0] for n in wo.weight_matmuls(proto.graph)})
    if wo.hessian_bytes(proto.graph, every) > HESSIAN_CACHE_BYTES:
        return {} if cache_only else wo.layer_input_hessians(src, sorted(set(needed)), blocks, Path(ctx.workdir))
    key = ("gptq-hessians", str(src), hashlib.sha256(blocks.tobytes()).hexdigest()[:16], blocks.shape)
    return ctx.cached(key, lambda: wo.layer_input_hessians(src, every, blocks, Path(ctx.workdir)))


def quantize_onnx(model, config: OnnxPTQConfig, ctx) -> Quantized:
    """Returns Quantized(OnnxModel of the quantized graph in a fresh folder of ctx.workdir,
    artifacts={"quantization.json": what was done, with the graph's op counts}).

    The input model (the worker's cached export) is never modified."""
    import json
    import logging

    import tempfile

    t0 = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix=f"onnx_ptq-{config.algorithm}-{config.resolved_bits}-{config.block_size}-",
                                    dir=ctx.workdir))
    dst = out_dir / "model.onnx"
    extra = {}
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
        elif config.algorithm == "hqq":
            _hqq(model.path, dst, config)
        else:
            extra = _own_weight_only(model.path, dst, config, blocks, ctx)
        result = model.derived(dst)
    seconds = time.perf_counter() - t0
    ops = result.op_counts()
    info = {"recipe": config.describe(), "quantize_seconds": round(seconds, 2), "op_counts": ops,
            "weight_format": config.resolved_format, "bits": config.resolved_bits, "block_size": config.block_size,
            "symmetric": config.resolved_symmetric if config.algorithm not in ("fp32", "int8_qdq") else None, **extra}
    ctx.log(f"onnx_ptq: {config.describe()} done in {seconds:.1f}s, {result.size_mb():.2f} MB; "
            f"MatMulNBits {ops.get('MatMulNBits', 0)}, QuantizeLinear {ops.get('QuantizeLinear', 0)}, "
            f"DequantizeLinear {ops.get('DequantizeLinear', 0)}, MatMul {ops.get('MatMul', 0)}")
    measured = {"layer_error_vs_rtn": extra["layer_error_vs_rtn_mean"]} if "layer_error_vs_rtn_mean" in extra else {}
    if "layer_bits" in extra:
        measured["float_layers"] = len(extra["layers"]) - len(extra["layer_bits"])
    return Quantized(result, artifacts={"quantization.json": json.dumps(info, indent=2).encode()},
                     info={"quantize_seconds": round(seconds, 2), **({"layers": extra["layers"]} if "layers" in extra else {})},
                     metrics=measured)


RECIPES.register("onnx_ptq", quantize_onnx)(OnnxPTQConfig)
