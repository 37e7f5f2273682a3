"""Static INT8 quantization of a TensorFlow SavedModel with Intel Neural Compressor.

neural-compressor's TensorFlow API (`neural_compressor.tensorflow`): `quantize_model`
(performance only: one pass with the given config) or `autotune` (accuracy aware: tries
the configs in turn, keeping more ops in float each time, until the model's loss on
held-out WikiText-2 training text is within `tolerable_loss` of FP32's). Calibration runs
the model on blocks of WikiText-2 training text (never the test split). INC inserts
QuantizeV2/Dequantize pairs in front of the MatMuls (and ConcatV2) it quantizes and fuses
them into quantized MatMul kernels.

Beside the trial, as the seed does, the recipe writes the graph before and after:
`extracted_graph_def.pb` (the FP32 graph INC read), `converted_graph_def.pb` (the INT8
graph) and their `.pbtxt` text forms; the INT8 model itself is a SavedModel again.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import check_bool, check_choice, check_float, check_int
from ..errors import ConfigError
from ..jobs import Quantized
from ..registry import RECIPES

WHERE = "recipe inc_static"
APPROACHES = ("performance_only", "accuracy_aware")
CALIBRATION_ALGORITHMS = ("minmax", "kl")  # INC's act_algorithm for TF
PRECISIONS = ("fp32", "int8")
HELDOUT_BLOCKS = 8
GRAPH_FILES = ("extracted_graph_def.pb", "extracted_graph_def.pbtxt", "converted_graph_def.pb",
               "converted_graph_def.pbtxt")


@dataclass(frozen=True)
class IncStaticConfig:
    """An INC static quantization recipe for a TF SavedModel.

    precision: "int8" (quantize) or "fp32" (the SavedModel as it is: the reference row).
    calibration_samples: token blocks of training text INC calibrates on (its calibration
    sampling size); calibration_seq_len: tokens per block (None: min(model max, 128)).
    calibration_algorithm: activation ranges, "minmax" or "kl".
    per_channel: weights per output channel (else per tensor). act_sym: symmetric INT8
    activations (else asymmetric).
    fp32_ops: op types (e.g. "MatMul", "ConcatV2") or op names (substrings of node names,
    e.g. "lm_head") INC must leave in float.
    approach: "performance_only" (quantize_model) or "accuracy_aware" (autotune: more ops in
    float until the held-out loss is within `tolerable_loss`, relative, of FP32's, at most
    `max_trials` configs).
    """

    precision: str = "int8"
    calibration_samples: int = 32
    calibration_seq_len: int | None = None
    calibration_algorithm: str = "minmax"
    per_channel: bool = False
    act_sym: bool = True
    fp32_ops: tuple = ()
    approach: str = "performance_only"
    tolerable_loss: float = 0.01
    max_trials: int = 3
    seed: int = 0

    model_format = "tf"  # recipes of this config take and return models.tf_export.TFSavedModel

    def __post_init__(self):
        check_choice(WHERE, "precision", self.precision, PRECISIONS)
        check_int(WHERE, "calibration_samples", self.calibration_samples, 1, 100_000)
        if self.calibration_seq_len is not None:
            check_int(WHERE, "calibration_seq_len", self.calibration_seq_len, 2, 1 << 20)
        check_choice(WHERE, "calibration_algorithm", self.calibration_algorithm, CALIBRATION_ALGORITHMS)
        check_bool(WHERE, "per_channel", self.per_channel)
        check_bool(WHERE, "act_sym", self.act_sym)
        if not isinstance(self.fp32_ops, (tuple, list)) or not all(isinstance(o, str) and o for o in self.fp32_ops):
            raise ConfigError(WHERE, "fp32_ops", self.fp32_ops, "a list of op types or op names (non-empty strings)")
        object.__setattr__(self, "fp32_ops", tuple(self.fp32_ops))  # hashable, whatever Tune passed
        check_choice(WHERE, "approach", self.approach, APPROACHES)
        check_float(WHERE, "tolerable_loss", self.tolerable_loss, 0.0, 1.0)
        check_int(WHERE, "max_trials", self.max_trials, 1, 100)
        check_int(WHERE, "seed", self.seed, 0, 2**31 - 1)

    def describe(self) -> str:
        """Returns a short label such as 'INC INT8 minmax per-tensor'."""
        if self.precision == "fp32":
            return "FP32"
        label = f"INC INT8 {self.calibration_algorithm} {'per-channel' if self.per_channel else 'per-tensor'}"
        if self.fp32_ops:
            label += f", fp32: {'+'.join(self.fp32_ops)}"
        return label + (", accuracy-aware" if self.approach == "accuracy_aware" else "")


def graph_op_counts(graph_def) -> dict[str, int]:
    """Returns {op type: count} over a GraphDef's nodes (library functions included)."""
    ops = Counter(n.op for n in graph_def.node)
    for fn in graph_def.library.function:
        ops.update(n.op for n in fn.node_def)
    return dict(ops)


def quantized_matmul_inputs(graph_def) -> dict[str, int]:
    """Returns, over a GraphDef's top-level nodes (2-D MatMuls; attention's BatchMatMulV2 is
    not counted), {"float_matmuls", "float_matmuls_fed_by_dequantize", "int8_matmuls" (INC's
    QuantizedMatMul* kernels), "int8_matmuls_fed_by_quantizev2" (first input from a
    QuantizeV2), "quantizev2", "dequantize" (separate Dequantize nodes)}."""
    by_name = {n.name: n for n in graph_def.node}

    def producer(inp: str):
        return by_name.get(inp.lstrip("^").split(":")[0])

    out = Counter()
    for n in graph_def.node:
        out["quantizev2"] += n.op == "QuantizeV2"
        out["dequantize"] += n.op == "Dequantize"
        if n.op == "MatMul":
            out["float_matmuls"] += 1
            out["float_matmuls_fed_by_dequantize"] += any(getattr(producer(i), "op", None) == "Dequantize" for i in n.input)
        elif n.op.lstrip("_").startswith("QuantizedMatMul"):
            out["int8_matmuls"] += 1
            out["int8_matmuls_fed_by_quantizev2"] += getattr(producer(n.input[0]), "op", None) == "QuantizeV2"
    return dict(out)


def write_graph(graph_def, folder: Path, stem: str) -> list[Path]:
    """Writes `graph_def` as `stem`.pb (binary) and `stem`.pbtxt (text) in `folder`; returns both paths."""
    from google.protobuf import text_format

    folder.mkdir(parents=True, exist_ok=True)
    pb, txt = folder / f"{stem}.pb", folder / f"{stem}.pbtxt"
    pb.write_bytes(graph_def.SerializeToString())
    txt.write_text(text_format.MessageToString(graph_def))
    return [pb, txt]


def graph_to_saved_model(graph_def, input_name: str, output_name: str, path: Path) -> Path:
    """Writes a frozen GraphDef as a SavedModel at `path` whose `serving_default` signature
    is {"input_ids": input tensor} -> {"logits": output tensor} (the FP32 export's names, so
    tasks run either the same way); returns path. (INC's own save names the output after
    the graph node, e.g. "Identity".)"""
    import tensorflow as tf

    from ..models.tf_gptj import INPUT_NAME, OUTPUT_NAME, SIGNATURE

    builder = tf.compat.v1.saved_model.builder.SavedModelBuilder(str(path))
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        tf.compat.v1.import_graph_def(graph_def, name="")
        g = sess.graph
        sig = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            {INPUT_NAME: g.get_tensor_by_name(_tensor(input_name))}, {OUTPUT_NAME: g.get_tensor_by_name(_tensor(output_name))})
        builder.add_meta_graph_and_variables(sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={SIGNATURE: sig})
    builder.save()
    return path


def calibration_blocks(model, config: IncStaticConfig, ctx):
    """Returns (numpy int64 [calibration_samples, seq_len] blocks of training text, seq_len)."""
    from .calibration import pick_blocks, token_blocks

    seq_len = config.calibration_seq_len or min(model.max_positions, 128)
    if seq_len > model.max_positions:
        raise ConfigError(WHERE, "calibration_seq_len", seq_len, f"at most the model's {model.max_positions} positions")
    blocks = token_blocks(ctx, seq_len, WHERE)
    # the last HELDOUT_BLOCKS blocks are the accuracy-aware tuning's held-out text
    pool = blocks[:-HELDOUT_BLOCKS] if len(blocks) > 2 * HELDOUT_BLOCKS else blocks
    return pick_blocks(pool, config.calibration_samples, config.seed).numpy(), seq_len


class BlockLoader:
    """INC's calibration dataloader protocol: iterable of (inputs, labels) with batch_size;
    one block of token ids per batch."""

    def __init__(self, blocks, batch_size: int = 1):
        self.blocks, self.batch_size = blocks, batch_size

    def __iter__(self):
        for i in range(0, len(self.blocks), self.batch_size):
            yield self.blocks[i : i + self.batch_size], None

    def __len__(self) -> int:
        return (len(self.blocks) + self.batch_size - 1) // self.batch_size


def fp32_patterns(entries, graph_def) -> list[str]:
    """Returns the op-name regular expressions INC's set_local takes for `entries`: an op type
    present in `graph_def` (e.g. "ConcatV2") becomes the exact names of its nodes; anything
    else is a substring of node names (e.g. "lm_head"). INC matches names with re.match from
    the start and takes any string for a name, never for a type, hence the translation."""
    import re

    by_type: dict[str, list[str]] = {}
    for n in graph_def.node:
        by_type.setdefault(n.op, []).append(n.name)
    out = []
    for entry in entries:
        if entry in by_type:
            out += [re.escape(name) + "$" for name in by_type[entry]]
        else:
            out.append(".*" + re.escape(entry))
    return out


def inc_config(config: IncStaticConfig, graph_def, fp32_ops=()):
    """Returns INC's StaticQuantConfig for `config`, with `config.fp32_ops` + `fp32_ops` (op
    types or name substrings of `graph_def`'s nodes) left in float."""
    from ..models.tf_runtime import require_inc

    inc = require_inc()
    q = inc.StaticQuantConfig(weight_granularity="per_channel" if config.per_channel else "per_tensor",
                              weight_sym=True, act_sym=config.act_sym, act_algorithm=config.calibration_algorithm)
    for pattern in fp32_patterns(tuple(config.fp32_ops) + tuple(fp32_ops), graph_def):
        q.set_local(pattern, inc.StaticQuantConfig(weight_dtype="fp32", act_dtype="fp32"))
    return q


def heldout_nll_fn(model, ctx, seq_len: int):
    """Returns eval_fn(INC model) -> minus the mean next-token NLL (nats/token) on the last
    HELDOUT_BLOCKS blocks of training text, which calibration never draws (higher is
    better, as INC's autotune wants)."""
    import numpy as np

    from .calibration import token_blocks

    held = token_blocks(ctx, seq_len, WHERE).numpy()[-HELDOUT_BLOCKS:]

    def eval_fn(inc_model) -> float:
        import tensorflow as tf

        fn = _signature_fn(inc_model)
        total = 0.0
        for row in held:
            logits = fn(tf.constant(row[None, :], tf.int64)).numpy()[0, :-1].astype(np.float64)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            total += -logp[np.arange(len(row) - 1), row[1:]].mean()
        return -total / len(held)

    return eval_fn


def _signature_fn(inc_model):
    """Returns a callable int64 ids tensor -> logits tensor running an INC model's graph."""
    import tensorflow as tf

    graph_def = inc_model.graph_def
    input_name = inc_model.input_tensor_names[0]
    output_name = inc_model.output_tensor_names[0]

    def imported():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    graph = wrapped.graph
    return wrapped.prune(graph.as_graph_element(_tensor(input_name)), graph.as_graph_element(_tensor(output_name)))


def _tensor(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def quantize_tf(model, config: IncStaticConfig, ctx) -> Quantized:
    """Returns Quantized(TFSavedModel of the INT8 SavedModel in a fresh folder of ctx.workdir,
    artifacts={the four graph files, "quantization.json"}). The input model is never modified."""
    import json
    import tempfile

    if config.precision == "fp32":
        return Quantized(model, info={"quantize_seconds": 0.0})
    from ..models.tf_runtime import require_inc

    inc = require_inc()
    import tensorflow as tf

    t0 = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="inc_static-", dir=ctx.workdir))
    blocks, seq_len = calibration_blocks(model, config, ctx)
    ctx.log(f"inc_static: {config.describe()}, calibration {len(blocks)} x {seq_len} tokens")
    ctx.check_cancelled()
    loader = BlockLoader(blocks)
    fp32_model = inc.Model(str(model.path))
    extracted = fp32_model.graph_def
    tried = []
    if config.approach == "performance_only":
        q = inc.quantize_model(fp32_model, inc_config(config, extracted), calib_dataloader=loader, calib_iteration=len(loader))
        tried.append({"fp32_ops": list(config.fp32_ops)})
    else:
        # each config leaves more in float: the LM head, then every MLP output projection too
        steps = [(), ("lm_head",), ("lm_head", "fc_out")][: config.max_trials]
        configs = [inc_config(config, extracted, s) for s in steps]
        from neural_compressor.common.base_tuning import TuningConfig

        tuning = TuningConfig(config_set=configs, max_trials=len(configs), tolerable_loss=config.tolerable_loss)
        q = inc.autotune(fp32_model, tuning, eval_fn=heldout_nll_fn(model, ctx, seq_len), calib_dataloader=loader,
                         calib_iteration=len(loader))
        tried = [{"fp32_ops": list(config.fp32_ops) + list(s)} for s in steps]
    if q is None:
        raise RuntimeError(f"inc_static: INC found no config within tolerable_loss {config.tolerable_loss} "
                           f"of FP32 in {len(tried)} tries")
    ctx.check_cancelled()
    converted = q.graph_def
    files = write_graph(extracted, out_dir / "graphs", "extracted_graph_def")
    files += write_graph(converted, out_dir / "graphs", "converted_graph_def")
    saved = out_dir / "saved_model"
    graph_to_saved_model(converted, q.input_tensor_names[0], q.output_tensor_names[0], saved)
    seconds = time.perf_counter() - t0
    result = model.derived(saved, precision="int8", recipe=config.describe())
    ops = graph_op_counts(converted)
    feeds = quantized_matmul_inputs(converted)
    info = {"recipe": config.describe(), "quantize_seconds": round(seconds, 2), "op_counts": ops,
            "matmul_inputs": feeds, "tried": tried, "calibration": {"samples": len(blocks), "seq_len": seq_len,
                                                                     "algorithm": config.calibration_algorithm},
            "neural_compressor": _inc_version(), "tensorflow": tf.__version__}
    ctx.log(f"inc_static: {config.describe()} done in {seconds:.1f}s, {result.size_mb():.2f} MB; "
            f"int8 MatMuls {feeds.get('int8_matmuls', 0)} ({feeds.get('int8_matmuls_fed_by_quantizev2', 0)} after a "
            f"QuantizeV2), float MatMuls {feeds.get('float_matmuls', 0)}, QuantizeV2 {feeds.get('quantizev2', 0)}, "
            f"Dequantize {feeds.get('dequantize', 0)}")
    artifacts = {f.name: f.read_bytes() for f in files}
    artifacts["quantization.json"] = json.dumps(info, indent=2).encode()
    return Quantized(result, artifacts=artifacts, info={"quantize_seconds": round(seconds, 2)})


def _inc_version() -> str:
    import neural_compressor

    return neural_compressor.__version__


RECIPES.register("inc_static", quantize_tf)(IncStaticConfig)
