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

Sequence classifiers (GLUE encoders, e.g. RobertaForSequenceClassification) take the same
path with a classifier wrapper: forward(input_ids, attention_mask, labels=None) returns
(logits,) or (loss, logits) (cross-entropy, or MSE for a one-output regression head). The
job's task supplies the training rows (`training_batches`, e.g. tasks.glue.GlueTask), in
padded batches. The wrapper turns the padded batch's 0/1 mask into the additive mask every
attention layer adds to its scores: 0 on real tokens, `attention_mask_value` on padded ones
(None: the dtype's minimum, as transformers does), computed by an aimet elementwise
Multiply so the mask tensor has its own activation quantizer, and each attention layer adds
it to its scores with an aimet elementwise Add (`masked_eager_attention`), so the masked
scores (softmax's input) have an activation quantizer too, as on an integer target. With
the dtype's minimum those quantizers calibrate to ranges reaching ~-3.4e38: 8 bits then
cannot resolve the real scores at all (every one rounds to the same level: uniform
attention), unless a clamp (clamp_value) cuts the range, which moves the padded value to
-clamp_value. A small value such as the seed's -6 keeps the range where the scores live.

Not quantized (as aimet-torch 2.x builds the sim from leaf modules): the functional ops
inside attention (QK^T and attention-probability matmuls, softmax, residual adds are
covered only where their outputs enter a quantized module).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from dataclasses import dataclass

from ..config import check_bool, check_choice, check_float, check_int
from ..errors import ConfigError
from ..jobs import Quantized
from ..registry import RECIPES
from .layer_choice import check_layer_fields, has_layer_choice, layer_bits

WHERE = "recipe aimet_qat"

# config name -> (aimet QuantScheme member name, learn ranges during training)
QUANT_SCHEMES = {
    "range_learning_tf": ("training_range_learning_with_tf_init", True),
    "range_learning_tf_enhanced": ("training_range_learning_with_tf_enhanced_init", True),
    "tf": ("post_training_tf", False),
    "tf_enhanced": ("post_training_tf_enhanced", False),
    "percentile": ("post_training_percentile", False),
}

DEPLOY_CHECKS = ("every_report", "last_report", "off")


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
    deploy_check: when the deployed ONNX QDQ graph (causal LMs) is exported and evaluated:
        "every_report" (default: every report carries deploy_* metrics, whatever report a
        scheduler stops the trial at), "last_report" (only the last planned report: trials a
        scheduler stops early have no deploy_* metrics; an export costs several times an
        evaluation of a small model, so short sweeps run much faster), or "off".
    deploy_kind: the device kind the exported QDQ graph is evaluated on (deploy_* metrics);
        None: the job's own kind. A GPU trial whose node has no onnxruntime CUDA provider can
        still measure its deployable graph with deploy_kind="cpu" (the metrics say where).
    tf32: CUDA only: TF32 tensor-core matmuls while the sim calibrates, trains and is
        evaluated (inputs rounded to a 10-bit mantissa, far finer than the 8-bit quantizers
        that follow; ~2x the matmul speed of true fp32 on H100). False: true fp32.
    warmup_frac: linear learning-rate warm-up over this fraction of the training steps, then
        linear decay to 0 (0: constant learning rate).
    attention_mask_value: sequence classifiers only: the additive attention mask of padded
        positions (a negative number; None: the dtype's minimum). See the module docstring.
    layers, float_layers, sensitivity_ranking, protected_layers, protected_bits: per-module
        choices (recipes/layer_choice.py), a layer being a module with a weight quantizer,
        named by its path in the sim (e.g. "lm.transformer.h.0.attn.c_attn"). `layers`:
        only these modules keep their quantizers (weights and activations), every other
        quantizer is removed (the sensitivity stage's one-layer probe); a float layer loses
        all of its quantizers; a protected layer's weight quantizer runs at protected_bits
        (None: the layer in float) while the rest use param_bw.
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
    deploy_check: str = "every_report"
    deploy_kind: str | None = None
    tf32: bool = False
    warmup_frac: float = 0.0
    attention_mask_value: float | None = None
    layers: tuple | None = None
    float_layers: tuple = ()
    sensitivity_ranking: tuple = ()
    protected_layers: int = 0
    protected_bits: int | None = None

    @staticmethod
    def reported_metrics(task_metrics: set[str]) -> set[str]:
        """Returns what a trial reports besides the task's `task_metrics`: the epoch, the
        training loss and, for causal LMs, the deployed graph's metrics (deploy_*)."""
        deployed = task_metrics | {"model_size_mb", "eval_seconds", "tokens_per_s", "latency_ms"}
        return {"epoch", "train_loss", "sim_deploy_gap_pct", "deploy_qdq_nodes", "deploy_export_max_abs_logit_diff",
                *(f"deploy_{k}" for k in deployed)}

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
        check_choice(WHERE, "deploy_check", self.deploy_check, DEPLOY_CHECKS)
        if self.deploy_kind is not None and (not isinstance(self.deploy_kind, str) or not self.deploy_kind):
            raise ConfigError(WHERE, "deploy_kind", self.deploy_kind, "a device kind's name, e.g. 'cpu'")
        check_float(WHERE, "warmup_frac", self.warmup_frac, 0, 1)
        check_bool(WHERE, "tf32", self.tf32)
        if self.attention_mask_value is not None:
            check_float(WHERE, "attention_mask_value", self.attention_mask_value, -3.0e38, 0)
            if self.attention_mask_value >= 0:
                raise ConfigError(WHERE, "attention_mask_value", self.attention_mask_value,
                                  "a negative number (added to the attention scores of padded positions), "
                                  "or None for the dtype's minimum")
        check_layer_fields(self, WHERE, self.param_bw, range(4, 17))


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


def is_sequence_classifier(model) -> bool:
    """Returns whether `model` is a transformers sequence classifier (...ForSequenceClassification)."""
    return type(model).__name__.endswith("ForSequenceClassification")


def activation_quantizers(sim_model):
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
        for _, q in activation_quantizers(sim_model):
            if not q.is_initialized():
                continue
            lo, hi = q.get_min(), q.get_max()
            new_lo, new_hi = lo.clamp(-clamp_value, clamp_value), hi.clamp(-clamp_value, clamp_value)
            if not (torch.equal(new_lo, lo) and torch.equal(new_hi, hi)):
                q.set_range(new_lo, new_hi)
                changed += 1
    return changed


def prepare_workload(model, config: AimetQATConfig, ctx):
    """Returns (Workload, torch device, info) for a deep copy of `model` on the job's
    device: Conv1D layers as Linear, GELUs as torch's, wrapped for QuantSim with its
    training data (qat_workloads); `model` itself is never touched. Raises ConfigError for
    an attention_mask_value on a causal LM."""
    import torch

    from ..models.conv1d import convert_conv1d_to_linear
    from .qat_models import replace_gelu_modules
    from .qat_workloads import causal_lm_workload, classifier_workload

    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    classifier = is_sequence_classifier(model)
    if config.attention_mask_value is not None and not classifier:
        raise ConfigError(WHERE, "attention_mask_value", config.attention_mask_value,
                          "None for a causal LM (its blocks are unpadded; the value applies to sequence classifiers)")
    inner = copy.deepcopy(model).to(device).eval()
    info = {"conv1d_converted": convert_conv1d_to_linear(inner), "gelu_replaced": replace_gelu_modules(inner)}
    work = (classifier_workload if classifier else causal_lm_workload)(inner, config, ctx)
    work.fp_model = work.fp_model.to(device)
    return work, device, info


def build_quantsim(work, config: AimetQATConfig, device):
    """Returns the aimet QuantizationSimModel of work.fp_model (in place) with this
    recipe's quantsim config, quant scheme and bit widths; encodings not yet computed."""
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    dummy = tuple(t.to(device) for t in work.dummy)
    scheme_name, _ = QUANT_SCHEMES[config.quant_scheme]
    with tempfile.TemporaryDirectory(prefix="aimet_qat_") as tmp:
        cfg_path = os.path.join(tmp, "quantsim_config.json")
        with open(cfg_path, "w") as f:
            json.dump(quantsim_config_dict(config), f)
        sim = QuantizationSimModel(work.fp_model, dummy_input=dummy, quant_scheme=getattr(QuantScheme, scheme_name),
                                   default_output_bw=config.output_bw, default_param_bw=config.param_bw,
                                   in_place=True, config_file=cfg_path)
    if config.quant_scheme == "percentile":
        sim.set_percentile_value(config.percentile)
    return sim


def weight_layers(sim_model) -> list[str]:
    """Returns the names of the sim's modules that quantize a weight, in module order."""
    from aimet_torch.nn import BaseQuantizationMixin

    return [name for name, m in sim_model.named_modules()
            if isinstance(m, BaseQuantizationMixin) and "weight" in m.param_quantizers and m.param_quantizers["weight"] is not None]


def remove_quantizers(module) -> None:
    """Removes every quantizer of an aimet quantized `module` (its weights and activations
    run in float)."""
    for name in list(module.param_quantizers):
        module.param_quantizers[name] = None
    for quantizers in (module.input_quantizers, module.output_quantizers):
        for i in range(len(quantizers)):
            quantizers[i] = None


def apply_layer_choice(sim, config: AimetQATConfig) -> tuple[list[str], dict[str, int]]:
    """Applies config's per-layer choices to the sim's quantizers before calibration (see
    AimetQATConfig); returns (every weight layer's name, {quantized layer: weight bits})."""
    from aimet_torch.nn import BaseQuantizationMixin

    layers = weight_layers(sim.model)
    bits = layer_bits(config, WHERE, layers, config.param_bw)
    if not has_layer_choice(config):
        return layers, bits
    weighted = set(layers)
    for name, module in sim.model.named_modules():
        if not isinstance(module, BaseQuantizationMixin):
            continue
        # a weight layer left out of `bits` is in float; with `layers`, so is every other module
        if name in weighted and name not in bits or name not in weighted and config.layers is not None:
            remove_quantizers(module)
        elif name in bits and bits[name] != config.param_bw:
            module.param_quantizers["weight"].bitwidth = bits[name]
    return layers, bits


def calibrate(sim, work, config: AimetQATConfig, ctx, device) -> int:
    """Computes the sim's encodings on work.calib, clamps activation ranges to
    ±config.clamp_value (when set) and freezes the quantizers of schemes that do not learn
    ranges; returns how many activation ranges the clamp changed."""
    def forward_calibration(m):
        for inputs in work.calib:
            ctx.check_cancelled()
            m(*(t.to(device) for t in inputs))

    sim.compute_encodings(forward_calibration)
    n_clamped = clamp_activation_ranges(sim.model, config.clamp_value) if config.clamp_value is not None else 0
    if not QUANT_SCHEMES[config.quant_scheme][1]:
        from aimet_torch.quantization.base import QuantizerBase

        for q in sim.model.modules():
            if isinstance(q, QuantizerBase):
                q.requires_grad_(False)  # fixed ranges: only the weights train
    return n_clamped


class EpochReporter:
    """Reports one evaluation of the sim to the job (ctx.report) with its exported encodings
    and, for causal LMs, the deployed ONNX QDQ graph's metrics and files
    (aimet_export.evaluate_deployed). Keeps the latest encodings and the last planned
    report's deployed files (`encodings`, `deploy_artifacts`)."""

    def __init__(self, sim, work, config: AimetQATConfig, ctx, device):
        self.sim, self.work, self.config, self.ctx = sim, work, config, ctx
        self.dummy = tuple(t.to(device) for t in work.dummy)
        self.encodings: bytes = b""
        self.deploy_artifacts: dict[str, bytes] = {}

    def export_encodings(self) -> bytes:
        """Returns aimet's exported encodings (format 1.0.0) of the sim as it is now."""
        with tempfile.TemporaryDirectory(prefix="aimet_qat_export_") as tmp:
            self.sim.onnx.export(args=self.dummy, f=os.path.join(tmp, "model.onnx"), dynamo=False,
                                 encoding_version="1.0.0", input_names=self.work.input_names, output_names=["logits"])
            with open(os.path.join(tmp, "model.encodings"), "rb") as f:
                return f.read()

    def __call__(self, metrics: dict, last: bool) -> None:
        """Reports `metrics` (plus deploy_* for causal LMs) with the encodings as artifacts."""
        from .aimet_export import evaluate_deployed

        # Every report carries its encodings (and, by default, deployed metrics): a scheduler
        # may end the trial after any of them. The graph's files ride only the last planned report.
        self.encodings = self.export_encodings()
        artifacts = {"encodings.json": self.encodings}
        check = self.config.deploy_check
        if self.work.check_tokens is not None and (check == "every_report" or (check == "last_report" and last)):
            deploy_metrics, deployed_files = evaluate_deployed(self.sim.model, metrics, self.ctx,
                                                                check_tokens=self.work.check_tokens,
                                                                kind=self.config.deploy_kind)
            metrics = {**metrics, **deploy_metrics}
            artifacts.update(deployed_files)
            if last:
                self.deploy_artifacts.update(deployed_files)
            self.ctx.log(f"aimet_qat: deployed QDQ graph (onnxruntime): {_short(deploy_metrics)}")
        self.ctx.report(metrics, artifacts)


def train_and_report(sim, work, config: AimetQATConfig, ctx, device, report: EpochReporter) -> list[float]:
    """Fine-tunes the sim for config.epochs epochs (AdamW, linear warm-up and decay),
    evaluating and reporting after each; returns the mean training loss of every epoch."""
    from ..models.training import adamw_with_schedule, train_epoch

    opt, sched = adamw_with_schedule(sim.model, lr=config.lr, weight_decay=config.weight_decay,
                                     total_steps=config.epochs * work.steps, warmup_frac=config.warmup_frac)

    def loss_of(batch):
        inputs, labels = batch
        return sim.model(*(t.to(device) for t in inputs), labels=labels.to(device))[0]

    losses = []
    for epoch in range(1, config.epochs + 1):
        sim.model.train()
        loss = train_epoch(work.epoch(), loss_of, opt, sched, epoch=epoch, where=WHERE,
                           check_cancelled=ctx.check_cancelled)
        sim.model.eval()
        losses.append(loss)
        metrics = ctx.evaluate(sim.model)
        report({**metrics, "epoch": epoch, "train_loss": loss}, last=epoch == config.epochs)
        ctx.log(f"aimet_qat: epoch {epoch}/{config.epochs}: train_loss {loss:.4f}, {_short(metrics)}")
    return losses


def quantize_aimet_qat(model, config: AimetQATConfig, ctx) -> Quantized:
    """Builds an aimet QuantSim of a copy of `model` (a causal LM, or a sequence classifier
    whose training rows come from the job's task), calibrates it, clamps activation ranges,
    reports the PTQ result as epoch 0, fine-tunes for config.epochs epochs (reporting each),
    exporting the encodings with every report (as its artifacts). For causal LMs every
    report also carries the deployed ONNX QDQ graph's metrics (deploy_<metric>,
    sim_deploy_gap_pct) and the last its files (model.onnx, deploy_gap_by_op.json).
    Returns Quantized(model=sim.model, artifacts={"encodings.json": aimet's exported
    encodings (format 1.0.0), and the deployed graph's files}, reported=True, info={...})."""
    import torch

    if ctx.evaluate is None:
        raise ValueError(f"{WHERE}: the job has no evaluate function (ctx.evaluate is None)")
    torch.manual_seed(config.seed)
    with matmul_tf32(config.tf32):
        return run_qat(model, config, ctx)


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """Within the block, CUDA matmuls use TF32 when `enabled` (a worker runs one job at a
    time, so the process-wide switch is the job's); restored after."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def run_qat(model, config: AimetQATConfig, ctx) -> Quantized:
    """quantize_aimet_qat's work (see there), under the caller's matmul precision."""
    work, device, prep_info = prepare_workload(model, config, ctx)
    sim = build_quantsim(work, config, device)
    layers, bits = apply_layer_choice(sim, config)
    n_clamped = calibrate(sim, work, config, ctx, device)
    report = EpochReporter(sim, work, config, ctx, device)

    metrics = ctx.evaluate(sim.model)
    report({**metrics, "epoch": 0}, last=config.epochs == 0)
    ctx.log(f"aimet_qat: epoch 0 (PTQ after init): {_short(metrics)}; {n_clamped} activation ranges clamped")
    train_losses = train_and_report(sim, work, config, ctx, device, report)

    info = {"quant_scheme": QUANT_SCHEMES[config.quant_scheme][0], **prep_info, "activation_ranges_clamped": n_clamped,
            **work.info, "steps_per_epoch": work.steps, "train_losses": train_losses, "encoding_version": "1.0.0",
            "layers": layers, "layer_bits": bits}
    return Quantized(model=sim.model, artifacts={"encodings.json": report.encodings, **report.deploy_artifacts},
                     reported=True, info=info)


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))


RECIPES.register("aimet_qat", quantize_aimet_qat)(AimetQATConfig)
