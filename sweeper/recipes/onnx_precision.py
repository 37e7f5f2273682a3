"""FP32 or FP16 inference of an ONNX graph on the job's device kind.

FP16 is had the way the device does it: a kind whose execution provider switches precision
itself (Enflame's TopsInference EP, through ORT_TOPSINFERENCE_FP16_ENABLE) keeps the FP32
graph and sets that switch; elsewhere (CPU, CUDA) the graph's float tensors are converted to
float16 with onnxruntime's own converter, inputs and outputs kept as they were.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import check_choice
from ..jobs import Quantized
from ..registry import RECIPES

WHERE = "recipe onnx_precision"


@dataclass(frozen=True)
class OnnxPrecisionConfig:
    """precision: "fp32" (the exported graph) or "fp16"."""

    precision: str = "fp32"

    model_format = "onnx"

    def __post_init__(self):
        check_choice(WHERE, "precision", self.precision, ("fp32", "fp16"))


def to_precision(model, config: OnnxPrecisionConfig, ctx) -> Quantized:
    """Returns Quantized(OnnxModel whose info["precision"] the ONNX task's session honours;
    for FP16 on a kind without a provider switch, a converted copy in ctx.workdir)."""
    import json
    import tempfile

    kind = getattr(ctx, "kind", None)
    t0 = time.perf_counter()
    how = "fp32 graph"
    if config.precision == "fp32":
        result = model.derived(model.path, precision="fp32")
    elif kind is not None and "fp16" in kind.precision_env:
        result = model.derived(model.path, precision="fp16")
        how = f"fp32 graph, {kind.provider} in fp16 mode ({kind.precision_env['fp16']})"
    else:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from ..models.onnx_export import save_onnx

        converted = convert_float_to_float16(onnx.load(str(model.path)), keep_io_types=True)
        out = Path(tempfile.mkdtemp(prefix="onnx_fp16-", dir=ctx.workdir)) / "model.onnx"
        save_onnx(converted, out)
        result = model.derived(out, precision="fp16")
        how = "graph converted to float16 (onnxruntime.transformers.float16, float32 inputs/outputs)"
    info = {"precision": config.precision, "how": how, "seconds": round(time.perf_counter() - t0, 2)}
    ctx.log(f"onnx_precision: {config.precision}: {how}")
    return Quantized(result, artifacts={"precision.json": json.dumps(info, indent=2).encode()}, info={"precision_how": how})


RECIPES.register("onnx_precision", to_precision)(OnnxPrecisionConfig)
