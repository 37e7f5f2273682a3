"""W8A8 quantization-aware training with aimet-torch QuantSim (the AIMET model zoo GPT-2 recipe).

Weights 8-bit symmetric, activations asymmetric (8 or 16 bit), bias not quantized, model
inputs quantized, range learning initialised from TF (min/max) statistics, then the
activation ranges are clamped to [-clamp_value, clamp_value] ("clamped initialisation").

aimet is imported inside the function only: importing it takes ~14 s.

How the model is prepared for aimet-torch 2.x (all on a deep copy; the caller's model is
never touched):
- transformers `Conv1D` -> `nn.Linear` (aimet has no quantized Conv1D);
- transformers `NewGELUActivation`/`GELUTanh`-style modules -> `nn.GELU(approximate="tanh")`
  (the same formula; aimet only knows torch's GELU);
- the LM is wrapped so its forward returns a tuple of tensors (QuantSim traces the model
  with torch.jit and refuses ModelOutput objects; `config.return_dict=False` cannot be used
  with transformers 5 because the inner GPT2Model shares the config and its caller expects
  a ModelOutput). The wrapper also passes an all-ones attention mask, which is what the
  unpadded blocks mean anyway, so transformers does not take its packed-sequence path
  (torch.diff, which the ONNX export cannot express).

Model-input quantization: the model's input is int64 token ids, consumed by the token
embedding. aimet-torch's QuantizedEmbedding has no input quantizer at all (ids are indices,
never quantized), so `model_input.is_input_quantized` cannot put a quantizer on the ids.
The first float tensor of the network (token + position embedding sum, the input of
`transformer.drop`) gets an asymmetric activation quantizer, and the embedding tables are
quantized as weights; that is the "quantized model input" of this recipe.

Not quantized (as aimet-torch 2.x builds the sim from leaf modules): the functional ops
inside attention (QK^T and attention-probability matmuls, softmax, residual adds are
covered only where their outputs enter a quantized module).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass

from ..config import check_bool, check_choice, check_float, check_int
from ..errors import ConfigError
from ..jobs import Quantized
from ..registry import RECIPES

WHERE = "recipe aimet_qat"

# config name -> (aimet QuantScheme member name, learn ranges during training)
QUANT_SCHEMES = {
    "range_learning_tf": ("training_range_learning_with_tf_init", True),
    "range_learning_tf_enhanced": ("training_range_learning_with_tf_enhanced_init", True),
    "tf": ("post_training_tf", False),
    "tf_enhanced": ("post_training_tf_enhanced", False),
    "percentile": ("post_training_percentile", False),
}


@dataclass(frozen=True)
class AimetQATConfig:
    """W8A8 QAT with aimet-torch QuantSim.

    quant_scheme: range_learning_tf (default) | range_learning_tf_enhanced | tf | tf_enhanced
        | percentile. The range_learning_* schemes train the quantizers' min/max with the
        weights; the others keep the calibrated ranges fixed and train the weights only.
    percentile: percentile (50..100) for quant_scheme="percentile".
    param_bw / output_bw: weight / activation bit widths (4..16).
    per_channel: per-output-channel weight quantization.
    input_quantization: quantize the model inputs (see the module docstring).
    clamp_value: after calibration clamp every activation range to [-v, v]; None: no clamp.
    lr, epochs, weight_decay, batch_size: AdamW fine-tuning on the LM loss.
    seq_len: tokens per block (None: the model's maximum positions).
    steps_per_epoch: optimizer steps per epoch (None: one pass over the training blocks).
    calibration_batches: batches used by compute_encodings.
    seed: shuffling and torch seed.
    deploy_kind: the device kind the exported QDQ graph is evaluated on (deploy_* metrics);
        None: the job's own kind. A GPU trial whose node has no onnxruntime CUDA provider can
        still measure its deployable graph with deploy_kind="cpu" (the metrics say where).
    """

    quant_scheme: str = "range_learning_tf"
    percentile: float = 99.99
    param_bw: int = 8
    output_bw: int = 8
    per_channel: bool = False
    input_quantization: bool = True
    clamp_value: float | None = 30.0
    lr: float = 5e-5
    epochs: int = 1
    weight_decay: float = 0.0
    batch_size: int = 8
    seq_len: int | None = None
    steps_per_epoch: int | None = None
    calibration_batches: int = 8
    seed: int = 0
    deploy_kind: str | None = None

    def __post_init__(self):
        check_choice(WHERE, "quant_scheme", self.quant_scheme, tuple(QUANT_SCHEMES))
        check_float(WHERE, "percentile", self.percentile, 50, 100)
        check_int(WHERE, "param_bw", self.param_bw, 4, 16)
        check_int(WHERE, "output_bw", self.output_bw, 4, 16)
        check_bool(WHERE, "per_channel", self.per_channel)
        check_bool(WHERE, "input_quantization", self.input_quantization)
        if self.clamp_value is not None:
            check_float(WHERE, "clamp_value", self.clamp_value, 0, 1e30, lo_open=True)
        check_float(WHERE, "lr", self.lr, 0, 1, lo_open=True)
        check_int(WHERE, "epochs", self.epochs, 0, 100)
        check_float(WHERE, "weight_decay", self.weight_decay, 0, 1)
        check_int(WHERE, "batch_size", self.batch_size, 1, 1024)
        if self.seq_len is not None:
            check_int(WHERE, "seq_len", self.seq_len, 8, 4096)
        if self.steps_per_epoch is not None:
            check_int(WHERE, "steps_per_epoch", self.steps_per_epoch, 1, 1 << 40)
        check_int(WHERE, "calibration_batches", self.calibration_batches, 1, 10000)
        check_int(WHERE, "seed", self.seed, -(1 << 63), (1 << 63) - 1)
        if self.deploy_kind is not None and (not isinstance(self.deploy_kind, str) or not self.deploy_kind):
            raise ConfigError(WHERE, "deploy_kind", self.deploy_kind, "a device kind's name, e.g. 'cpu'")


def quantsim_config_dict(config: AimetQATConfig) -> dict:
    """Returns the aimet quantsim config (JSON-able dict) for `config`: ops' outputs quantized
    asymmetric, params quantized symmetric, bias not quantized, per-channel as configured,
    model inputs quantized when config.input_quantization."""
    return {
        "defaults": {
            "ops": {"is_output_quantized": "True", "is_symmetric": "False"},
            "params": {"is_quantized": "True", "is_symmetric": "True"},
            "strict_symmetric": "False",
            "per_channel_quantization": str(bool(config.per_channel)),
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {},
        "supergroups": [],
        "model_input": {"is_input_quantized": "True"} if config.input_quantization else {},
        "model_output": {},
    }


_WRAPPER_CLS = None


def _wrapper_cls():
    """Returns the (lazily defined, module-level) causal-LM wrapper class."""
    global _WRAPPER_CLS
    if _WRAPPER_CLS is None:
        import torch

        class CausalLMTupleOutput(torch.nn.Module):
            """Wraps a transformers causal LM: forward(input_ids, labels=None) returns
            (logits,) or (loss, logits), like transformers' return_dict=False."""

            def __init__(self, lm):
                super().__init__()
                self.lm = lm
                self.config = lm.config

            def forward(self, input_ids, labels=None):
                out = self.lm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              labels=labels, use_cache=False, return_dict=True)
                return (out.logits,) if labels is None else (out.loss, out.logits)

        CausalLMTupleOutput.__module__ = __name__
        CausalLMTupleOutput.__qualname__ = "CausalLMTupleOutput"
        globals()["CausalLMTupleOutput"] = CausalLMTupleOutput  # picklable by reference
        _WRAPPER_CLS = CausalLMTupleOutput
    return _WRAPPER_CLS


def _replace_tanh_gelu(model) -> int:
    """Replaces transformers' tanh-approximation GELU modules with torch.nn.GELU('tanh');
    returns the count."""
    import torch
    from transformers import activations

    kinds = tuple(getattr(activations, n) for n in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")
                  if hasattr(activations, n))
    targets = [(n, m) for n, m in model.named_modules() if kinds and isinstance(m, kinds)]
    for name, _ in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, torch.nn.GELU(approximate="tanh"))
    return len(targets)


def _token_blocks(ctx, seq_len: int):
    """Returns a LongTensor (n_blocks, seq_len) of non-overlapping blocks of ctx.train_text."""
    from .calibration import token_blocks

    return token_blocks(ctx, seq_len, WHERE)


def _activation_quantizers(sim_model):
    """Yields (name, quantizer) for every input/output (activation) quantizer in the sim."""
    from aimet_torch.nn import BaseQuantizationMixin

    for mname, mod in sim_model.named_modules():
        if not isinstance(mod, BaseQuantizationMixin):
            continue
        for kind in ("input_quantizers", "output_quantizers"):
            for i, q in enumerate(getattr(mod, kind)):
                if q is not None:
                    yield f"{mname}.{kind}.{i}", q


def clamp_activation_ranges(sim_model, clamp_value: float) -> int:
    """Clamps every initialised activation quantizer's [min, max] to [-clamp_value,
    clamp_value] with the quantizer's own set_range; returns how many ranges changed."""
    import torch

    changed = 0
    with torch.no_grad():
        for _, q in _activation_quantizers(sim_model):
            if not q.is_initialized():
                continue
            lo, hi = q.get_min(), q.get_max()
            new_lo, new_hi = lo.clamp(-clamp_value, clamp_value), hi.clamp(-clamp_value, clamp_value)
            if not (torch.equal(new_lo, lo) and torch.equal(new_hi, hi)):
                q.set_range(new_lo, new_hi)
                changed += 1
    return changed


def quantize_aimet_qat(model, config: AimetQATConfig, ctx) -> Quantized:
    """Builds an aimet QuantSim of a copy of `model`, calibrates it, clamps activation ranges,
    reports the PTQ result as epoch 0, fine-tunes for config.epochs epochs (reporting each),
    exporting the encodings with every report (as its artifacts). The last report also
    carries the deployed ONNX QDQ graph's metrics and files (aimet_export.evaluate_deployed):
    deploy_<metric>, sim_deploy_gap_pct, model.onnx, deploy_gap_by_op.json (every report
    carries them, so a trial stopped early by the scheduler has them too). Returns
    Quantized(model=sim.model, artifacts={"encodings.json": aimet's exported encodings
    (format 1.0.0), and the deployed graph's files}, reported=True, info={...})."""
    import torch
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    from ..models.conv1d import convert_conv1d_to_linear
    from ..tasks.perplexity import model_max_positions
    from .aimet_export import evaluate_deployed

    if ctx.evaluate is None:
        raise ValueError(f"{WHERE}: the job has no evaluate function (ctx.evaluate is None)")
    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    torch.manual_seed(config.seed)

    max_pos = model_max_positions(model)
    seq_len = config.seq_len or max_pos
    if seq_len > max_pos:
        raise ConfigError(WHERE, "seq_len", seq_len, f"at most the model's {max_pos} positions")
    blocks = _token_blocks(ctx, seq_len)

    lm = copy.deepcopy(model).to(device).eval()
    n_conv1d = convert_conv1d_to_linear(lm)
    n_gelu = _replace_tanh_gelu(lm)
    fp_model = _wrapper_cls()(lm)

    scheme_name, learn_ranges = QUANT_SCHEMES[config.quant_scheme]
    bs = config.batch_size
    calib = [blocks[i : i + bs] for i in range(0, len(blocks), bs)][: config.calibration_batches]
    dummy = calib[0][:1].to(device)

    with tempfile.TemporaryDirectory(prefix="aimet_qat_") as tmp:
        cfg_path = os.path.join(tmp, "quantsim_config.json")
        with open(cfg_path, "w") as f:
            json.dump(quantsim_config_dict(config), f)
        sim = QuantizationSimModel(fp_model, dummy_input=dummy, quant_scheme=getattr(QuantScheme, scheme_name),
                                   default_output_bw=config.output_bw, default_param_bw=config.param_bw,
                                   in_place=True, config_file=cfg_path)
    if config.quant_scheme == "percentile":
        sim.set_percentile_value(config.percentile)

    def calibrate(m):
        for batch in calib:
            ctx.check_cancelled()
            m(batch.to(device))

    sim.compute_encodings(calibrate)
    n_clamped = clamp_activation_ranges(sim.model, config.clamp_value) if config.clamp_value is not None else 0
    if not learn_ranges:
        from aimet_torch.quantization.base import QuantizerBase

        for q in sim.model.modules():
            if isinstance(q, QuantizerBase):
                q.requires_grad_(False)  # fixed ranges: only the weights train

    def export_encodings() -> bytes:
        with tempfile.TemporaryDirectory(prefix="aimet_qat_export_") as tmp:
            onnx_path = os.path.join(tmp, "model.onnx")
            sim.onnx.export(args=(dummy,), f=onnx_path, dynamo=False, encoding_version="1.0.0",
                            input_names=["input_ids"], output_names=["logits"])
            with open(os.path.join(tmp, "model.encodings"), "rb") as f:
                return f.read()

    deploy_artifacts: dict[str, bytes] = {}

    def report(metrics: dict, last: bool) -> bytes:
        # Every report carries its encodings: a scheduler may end the trial after any of
        # them, and the best trial's last report is the one whose encodings are exported.
        # The deployed graph is measured with every report too, so a trial that the
        # scheduler stops after any epoch still has its deploy_* numbers; the graph's files
        # ride only the last planned report (the checkpoint keeps the latest artifacts).
        encodings = export_encodings()
        artifacts = {"encodings.json": encodings}
        deploy_metrics, deployed_files = evaluate_deployed(sim.model, metrics, ctx, check_tokens=calib[0][:2],
                                                            kind=config.deploy_kind)
        metrics = {**metrics, **deploy_metrics}
        artifacts.update(deployed_files)
        if last:
            deploy_artifacts.update(deployed_files)
        ctx.log(f"aimet_qat: deployed QDQ graph (onnxruntime): {_short(deploy_metrics)}")
        ctx.report(metrics, artifacts)
        return encodings

    metrics = ctx.evaluate(sim.model)
    encodings = report({**metrics, "epoch": 0}, last=config.epochs == 0)
    ctx.log(f"aimet_qat: epoch 0 (PTQ after init): {_short(metrics)}; {n_clamped} activation ranges clamped")

    params = [p for p in sim.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n_blocks = len(blocks)
    steps = config.steps_per_epoch or math.ceil(n_blocks / bs)
    order = torch.empty(0, dtype=torch.long)
    train_losses = []
    for epoch in range(1, config.epochs + 1):
        sim.model.train()
        total, count = 0.0, 0
        for step in range(1, steps + 1):
            ctx.check_cancelled()
            if len(order) < bs and (config.steps_per_epoch is not None or step == 1):
                order = torch.cat([order, torch.randperm(n_blocks, generator=gen)])
            idx, order = order[:bs], order[bs:]
            batch = blocks[idx].to(device)
            loss = sim.model(batch, labels=batch)[0]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{WHERE}: training loss is {loss.item()} at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            count += 1
        sim.model.eval()
        train_loss = total / count
        train_losses.append(train_loss)
        metrics = ctx.evaluate(sim.model)
        encodings = report({**metrics, "epoch": epoch, "train_loss": train_loss}, last=epoch == config.epochs)
        ctx.log(f"aimet_qat: epoch {epoch}/{config.epochs}: train_loss {train_loss:.4f}, {_short(metrics)}")

    info = {
        "quant_scheme": scheme_name,
        "conv1d_converted": n_conv1d,
        "gelu_replaced": n_gelu,
        "activation_ranges_clamped": n_clamped,
        "seq_len": seq_len,
        "train_blocks": n_blocks,
        "steps_per_epoch": steps,
        "train_losses": train_losses,
        "encoding_version": "1.0.0",
    }
    return Quantized(model=sim.model, artifacts={"encodings.json": encodings, **deploy_artifacts}, reported=True,
                     info=info)


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))


RECIPES.register("aimet_qat", quantize_aimet_qat)(AimetQATConfig)
