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
    warmup_frac: linear learning-rate warm-up over this fraction of the training steps, then
        linear decay to 0 (0: constant learning rate).
    attention_mask_value: sequence classifiers only: the additive attention mask of padded
        positions (a negative number; None: the dtype's minimum). See the module docstring.
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
    warmup_frac: float = 0.0
    attention_mask_value: float | None = None

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
        check_float(WHERE, "warmup_frac", self.warmup_frac, 0, 1)
        if self.attention_mask_value is not None:
            check_float(WHERE, "attention_mask_value", self.attention_mask_value, -3.0e38, 0)
            if self.attention_mask_value >= 0:
                raise ConfigError(WHERE, "attention_mask_value", self.attention_mask_value,
                                  "a negative number (added to the attention scores of padded positions), "
                                  "or None for the dtype's minimum")


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


_CLASSIFIER_CLS = None


def classifier_wrapper_cls():
    """Returns the (lazily defined, module-level) sequence-classifier wrapper class:
    ClassifierTupleOutput(classifier, attention_mask_value)."""
    global _CLASSIFIER_CLS
    if _CLASSIFIER_CLS is None:
        import torch
        from aimet_torch.nn.modules.custom import Multiply

        class ClassifierTupleOutput(torch.nn.Module):
            """Wraps a transformers sequence classifier: forward(input_ids, attention_mask=None,
            labels=None) returns (logits,) or (loss, logits). The 0/1 padding mask becomes the
            additive (batch, 1, 1, seq) mask `mask_scale((1 - mask), value)`: 0 on real tokens,
            `value` on padded ones (None: the float dtype's minimum)."""

            def __init__(self, clf, mask_value: float | None):
                super().__init__()
                self.clf = clf
                self.config = clf.config
                value = torch.finfo(torch.float32).min if mask_value is None else float(mask_value)
                self.register_buffer("mask_value", torch.tensor(value, dtype=torch.float32))
                self.mask_scale = Multiply()  # aimet quantizes its output: the mask's own quantizer

            def forward(self, input_ids, attention_mask=None, labels=None):
                from ..tasks.glue import classification_loss

                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                padded = 1.0 - attention_mask[:, None, None, :].to(self.mask_value.dtype)
                additive = self.mask_scale(padded, self.mask_value)
                logits = self.clf(input_ids=input_ids, attention_mask=additive, return_dict=True).logits
                return (logits,) if labels is None else (classification_loss(logits, labels), logits)

        ClassifierTupleOutput.__module__ = __name__
        ClassifierTupleOutput.__qualname__ = "ClassifierTupleOutput"
        globals()["ClassifierTupleOutput"] = ClassifierTupleOutput  # picklable by reference
        _CLASSIFIER_CLS = ClassifierTupleOutput
    return _CLASSIFIER_CLS


ATTENTION_IMPL = "sweeper_masked_eager"


def masked_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, except that the mask is added to the scores by the
    attention module's `score_add` (an aimet elementwise Add, so the masked scores, softmax's
    input, get an activation quantizer) where it has one. Returns (output, probabilities)."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        add = getattr(module, "score_add", None)
        scores = add(scores, attention_mask) if add is not None else scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def prepare_classifier(clf, mask_value: float | None):
    """Returns the QuantSim-ready wrapper of sequence classifier `clf` (modified in place:
    pass a copy): every self-attention module (one with query, key and scaling) gets a
    `score_add` module and the model runs masked_eager_attention; the wrapper turns 0/1
    padding masks into additive ones with `mask_value` (None: the dtype's minimum)."""
    from aimet_torch.nn.modules.custom import Add
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_IMPL, masked_eager_attention)
    for m in clf.modules():
        if all(hasattr(m, a) for a in ("query", "key", "scaling")):
            m.score_add = Add()
    clf.config._attn_implementation = ATTENTION_IMPL
    return classifier_wrapper_cls()(clf, mask_value)


def is_sequence_classifier(model) -> bool:
    """Returns whether `model` is a transformers sequence classifier (...ForSequenceClassification)."""
    return type(model).__name__.endswith("ForSequenceClassification")


def _replace_tanh_gelu(model) -> int:
    """Replaces transformers' GELU modules (tanh approximation, and the exact erf GELU that
    BERT/RoBERTa use) with torch.nn.GELU of the same formula (aimet only knows torch's);
    returns the count."""
    import torch
    from transformers import activations

    tanh = tuple(getattr(activations, n) for n in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")
                 if hasattr(activations, n))
    exact = tuple(getattr(activations, n) for n in ("GELUActivation",) if hasattr(activations, n))
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, tanh + exact)
               and not (isinstance(m, exact) and getattr(m, "act", torch.nn.functional.gelu) is not torch.nn.functional.gelu)]
    for name, m in targets:
        parent, _, child = name.rpartition(".")
        approx = "tanh" if isinstance(m, tanh) else "none"
        setattr(model.get_submodule(parent) if parent else model, child, torch.nn.GELU(approximate=approx))
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


@dataclass
class Workload:
    """What the QAT loop needs of one kind of model (causal LM or sequence classifier).

    fp_model: the wrapped float model QuantSim is built on. dummy: its example inputs (a
    tuple). calib: input tuples for compute_encodings. epoch(): one epoch of training
    batches, each (inputs tuple, labels). steps: batches per epoch. input_names: the ONNX
    export's inputs. check_tokens: ids for the deployed graph's check (None: the deployed
    graph is not measured). info: settings for the trial's info."""

    fp_model: object
    dummy: tuple
    calib: list
    epoch: object
    steps: int
    input_names: list
    check_tokens: object
    info: dict


def _causal_lm_workload(lm, config: AimetQATConfig, ctx, device) -> Workload:
    import torch

    from ..tasks.perplexity import model_max_positions

    max_pos = model_max_positions(lm)
    seq_len = config.seq_len or max_pos
    if seq_len > max_pos:
        raise ConfigError(WHERE, "seq_len", seq_len, f"at most the model's {max_pos} positions")
    blocks = _token_blocks(ctx, seq_len)
    bs = config.batch_size
    calib = [(blocks[i : i + bs],) for i in range(0, len(blocks), bs)][: config.calibration_batches]
    gen = torch.Generator().manual_seed(config.seed)
    n_blocks = len(blocks)
    steps = config.steps_per_epoch or math.ceil(n_blocks / bs)
    state = {"order": torch.empty(0, dtype=torch.long)}

    def epoch():
        out = []
        for step in range(1, steps + 1):
            order = state["order"]
            if len(order) < bs and (config.steps_per_epoch is not None or step == 1):
                order = torch.cat([order, torch.randperm(n_blocks, generator=gen)])
            idx, state["order"] = order[:bs], order[bs:]
            batch = blocks[idx]
            out.append(((batch,), batch))
        return out

    return Workload(_wrapper_cls()(lm), (calib[0][0][:1],), calib, epoch, steps, ["input_ids"], calib[0][0][:2],
                    {"seq_len": seq_len, "train_blocks": n_blocks})


def _classifier_workload(clf, config: AimetQATConfig, ctx) -> Workload:
    task = getattr(ctx, "task", None)
    if not hasattr(task, "training_data"):
        raise ConfigError(WHERE, "task", type(task).__name__,
                          "a task that supplies training rows (e.g. glue) for a sequence classifier")
    epoch_fn, steps, settings = task.training_data(ctx, config.batch_size, config.seed)
    if config.steps_per_epoch is not None:
        full, steps = epoch_fn, config.steps_per_epoch

        def epoch_fn():
            out = []
            while len(out) < steps:
                out += full()
            return out[:steps]

    first = epoch_fn()
    calib = [(x, m) for x, m, _ in first][: config.calibration_batches]
    x0, m0 = calib[0]

    def epoch():
        return [((x, m), y) for x, m, y in epoch_fn()]

    mask_value = config.attention_mask_value
    return Workload(prepare_classifier(clf, mask_value), (x0[:1], m0[:1]), calib, epoch, steps,
                    ["input_ids", "attention_mask"], None,
                    {**settings, "attention_mask_value": "dtype min" if mask_value is None else mask_value,
                     "deployed_graph": "not measured for sequence classifiers (the deployed check reads a causal LM)"})


def quantize_aimet_qat(model, config: AimetQATConfig, ctx) -> Quantized:
    """Builds an aimet QuantSim of a copy of `model` (a causal LM, or a sequence classifier
    whose training rows come from the job's task), calibrates it, clamps activation ranges,
    reports the PTQ result as epoch 0, fine-tunes for config.epochs epochs (reporting each),
    exporting the encodings with every report (as its artifacts). For causal LMs the last
    report also carries the deployed ONNX QDQ graph's metrics and files
    (aimet_export.evaluate_deployed): deploy_<metric>, sim_deploy_gap_pct, model.onnx,
    deploy_gap_by_op.json (every report carries them, so a trial stopped early by the
    scheduler has them too). Returns Quantized(model=sim.model, artifacts={"encodings.json":
    aimet's exported encodings (format 1.0.0), and the deployed graph's files},
    reported=True, info={...})."""
    import torch
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    from ..models.conv1d import convert_conv1d_to_linear
    from ..models.training import adamw_with_schedule, train_epoch
    from .aimet_export import evaluate_deployed

    if ctx.evaluate is None:
        raise ValueError(f"{WHERE}: the job has no evaluate function (ctx.evaluate is None)")
    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    torch.manual_seed(config.seed)

    classifier = is_sequence_classifier(model)
    if config.attention_mask_value is not None and not classifier:
        raise ConfigError(WHERE, "attention_mask_value", config.attention_mask_value,
                          "None for a causal LM (its blocks are unpadded; the value applies to sequence classifiers)")
    inner = copy.deepcopy(model).to(device).eval()
    n_conv1d = convert_conv1d_to_linear(inner)
    n_gelu = _replace_tanh_gelu(inner)
    work = _classifier_workload(inner, config, ctx) if classifier else _causal_lm_workload(inner, config, ctx, device)
    fp_model = work.fp_model.to(device)
    dummy = tuple(t.to(device) for t in work.dummy)

    scheme_name, learn_ranges = QUANT_SCHEMES[config.quant_scheme]
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
        for inputs in work.calib:
            ctx.check_cancelled()
            m(*(t.to(device) for t in inputs))

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
            sim.onnx.export(args=dummy, f=onnx_path, dynamo=False, encoding_version="1.0.0",
                            input_names=work.input_names, output_names=["logits"])
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
        if work.check_tokens is not None:
            deploy_metrics, deployed_files = evaluate_deployed(sim.model, metrics, ctx, check_tokens=work.check_tokens,
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

    opt, sched = adamw_with_schedule(sim.model, lr=config.lr, weight_decay=config.weight_decay,
                                     total_steps=config.epochs * work.steps, warmup_frac=config.warmup_frac)

    def loss_of(batch):
        inputs, labels = batch
        return sim.model(*(t.to(device) for t in inputs), labels=labels.to(device))[0]

    train_losses = []
    for epoch in range(1, config.epochs + 1):
        sim.model.train()
        train_loss = train_epoch(work.epoch(), loss_of, opt, sched, epoch=epoch, where=WHERE,
                                 check_cancelled=ctx.check_cancelled)
        sim.model.eval()
        train_losses.append(train_loss)
        metrics = ctx.evaluate(sim.model)
        encodings = report({**metrics, "epoch": epoch, "train_loss": train_loss}, last=epoch == config.epochs)
        ctx.log(f"aimet_qat: epoch {epoch}/{config.epochs}: train_loss {train_loss:.4f}, {_short(metrics)}")

    info = {
        "quant_scheme": scheme_name,
        "conv1d_converted": n_conv1d,
        "gelu_replaced": n_gelu,
        "activation_ranges_clamped": n_clamped,
        **work.info,
        "steps_per_epoch": work.steps,
        "train_losses": train_losses,
        "encoding_version": "1.0.0",
    }
    return Quantized(model=sim.model, artifacts={"encodings.json": encodings, **deploy_artifacts}, reported=True,
                     info=info)


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))


RECIPES.register("aimet_qat", quantize_aimet_qat)(AimetQATConfig)
