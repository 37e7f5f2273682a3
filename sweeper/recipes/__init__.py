"""Quantizers, one module per backend; importing this package registers them."""
from ..registry import RECIPES
from . import aimet_qat, inc_static, onnx_precision, onnx_ptq  # noqa: F401


def quantize(model, config, ctx):
    """Runs the recipe registered for type(config) on `model`; returns a jobs.Quantized."""
    return RECIPES.for_config(config).fn(model, config, ctx)


__all__ = ["quantize"]
