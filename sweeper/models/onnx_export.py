"""Export of a causal LM to ONNX, and the handle the ONNX recipes and tasks pass around.

The exporter is torch's own (`torch.onnx.export(..., dynamo=True)`, through torch.export
and onnxscript): dynamic batch and sequence, no KV cache, one output `logits`. Every export
is checked against the torch model on the same tokens; the max abs logit difference goes
into the handle's `info`. (The TorchScript exporter, `dynamo=False`, was tried first and
baked the trace's shapes into the attention mask of transformers 5 models: 0.5 logit
error at other lengths, so it is not used.)
"""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MIB = float(1 << 20)
# Above this the protobuf limit (2 GiB) is near: weights go to one external data file.
EXTERNAL_DATA_ABOVE_BYTES = 1_500_000_000
INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"


@dataclass
class OnnxModel:
    """An ONNX causal LM on disk: `path` is the graph; external data, if any, lies beside it
    in the same folder, which holds nothing else.

    max_positions: longest sequence the model accepts, in tokens. vocab_size: logits width.
    source_key: content key of the weights it was exported from. info: how it was made.
    """

    path: Path
    max_positions: int
    vocab_size: int
    source_key: str = ""
    info: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Returns the folder holding the graph and its external data."""
        return self.path.parent

    def size_mb(self) -> float:
        """Returns the model's size on disk (graph plus external data) in MB of 2**20 bytes."""
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file()) / MIB

    def op_counts(self) -> dict[str, int]:
        """Returns {op type: count} over the main graph's nodes (weights are not loaded)."""
        import onnx

        graph = onnx.load(str(self.path), load_external_data=False).graph
        return dict(Counter(n.op_type for n in graph.node))

    def derived(self, path: Path, **info) -> "OnnxModel":
        """Returns a handle for a model made from this one (a quantized copy) at `path`."""
        return OnnxModel(Path(path), self.max_positions, self.vocab_size, self.source_key, {**self.info, **info})


def save_onnx(model_proto, path: Path) -> Path:
    """Writes `model_proto` to `path` (external data beside it when it is large); returns path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = model_proto.ByteSize() > EXTERNAL_DATA_ABOVE_BYTES if hasattr(model_proto, "ByteSize") else True
    onnx.save_model(model_proto, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data" if large else None)
    return path


def _logits_only(model):
    """Returns the torch module the exporter traces: input_ids -> logits, no cache."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly(model)


def max_positions_of(model) -> int:
    """Returns the number of positions a transformers causal LM accepts, in tokens."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"cannot tell how many positions {type(model).__name__} accepts")


def export_causal_lm(model, out_dir: str | Path, *, opset: int = 18, source_key: str = "",
                     check_tokens=None, log=print) -> OnnxModel:
    """Exports a transformers causal LM to `out_dir`/model.onnx (dynamic batch and sequence,
    no KV cache) and checks it against the torch model with onnxruntime on the CPU.

    check_tokens: a 1-D LongTensor of real token ids to check on (random ids otherwise).
    Returns the OnnxModel; its info holds the opset, the exporter, the export time (s) and
    `export_max_abs_logit_diff` (max |onnx - torch| over the check batch, in logits).
    """
    import time

    import torch

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    max_pos = max_positions_of(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        # Example input of batch 2 so neither dimension is specialised to 1 by torch.export.
        example = torch.randint(0, vocab, (2, min(16, max_pos)), device=device)
        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("sequence", min=1, max=max_pos)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _logits_only(model), (example,), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, 1: seq},), verbose=False, report=False,
            )
        program.save(str(out_dir / "model.onnx"))  # external data only past 2 GB
        n_gemm = gemm_to_matmul_add(out_dir / "model.onnx")
        seconds = time.perf_counter() - t0
        onnx_model = OnnxModel(out_dir / "model.onnx", max_pos, vocab, source_key)
        diff = check_against_torch(onnx_model, model, check_tokens)
    finally:
        model.train(was_training)
    import onnx

    actual_opset = next((o.version for o in onnx.load(str(out_dir / "model.onnx"), load_external_data=False).opset_import
                         if o.domain in ("", "ai.onnx")), None)
    if actual_opset != opset:
        log(f"onnx: opset {opset} was asked for; torch's exporter could not convert the graph down and "
            f"kept opset {actual_opset}")
    onnx_model.info.update({"exporter": f"torch.onnx.export dynamo=True (torch {torch.__version__})",
                            "opset": actual_opset, "opset_requested": opset, "export_seconds": round(seconds, 2), "gemm_rewritten": n_gemm,
                            "export_max_abs_logit_diff": diff, "fp32_size_mb": round(onnx_model.size_mb(), 3)})
    log(f"onnx: exported {type(model).__name__} (opset {actual_opset}) in {seconds:.1f}s, "
        f"{onnx_model.size_mb():.1f} MB, max |logit diff| vs torch {diff:.2e}")
    return onnx_model


EXPORT_CACHE_VERSION = 1  # bump when what an export holds changes
EXPORT_INFO_FILE = "export.json"


def export_cache_entry(source_key: str, opset: int) -> Path:
    """Returns the export cache folder of weights `source_key` at `opset` under this
    machine's cache root (cache.cache_root()/onnx/), for this torch version."""
    import torch

    from ..cache import cache_root

    return cache_root() / "onnx" / f"{source_key[:24]}-opset{opset}-torch{torch.__version__}-v{EXPORT_CACHE_VERSION}"


def export_cached(model, source_key: str, *, opset: int = 18, log=print) -> OnnxModel:
    """Returns the ONNX export of `model`, whose weights have content key `source_key`, from
    this machine's export cache, exporting and checking it (export_causal_lm) only when the
    cache lacks it: the workers of one node, and later sweeps, share one export instead of
    each repeating it (seconds to minutes of CPU each). Concurrent callers export once
    (cache.build_once). The graph lies in <entry>/graph/, read-only by convention: recipes
    write their graphs elsewhere."""
    import json

    from ..cache import build_once

    entry = export_cache_entry(source_key, opset)
    exported = []  # build_once checks the entry (hashing every file) once; this says whether it built

    def build(tmp: Path) -> None:
        exported.append(True)
        onnx_model = export_causal_lm(model, tmp / "graph", opset=opset, source_key=source_key, log=log)
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps({"max_positions": onnx_model.max_positions,
                                                        "vocab_size": onnx_model.vocab_size, "info": onnx_model.info}))

    build_once(entry, build)
    meta = json.loads((entry / EXPORT_INFO_FILE).read_text())
    if not exported:
        log(f"onnx: export of {source_key[:16]} (opset {opset}) from this machine's cache, {entry}")
    return OnnxModel(entry / "graph" / "model.onnx", meta["max_positions"], meta["vocab_size"], source_key,
                     {**meta["info"], "export_cache": str(entry)})


def gemm_to_matmul_add(path: Path) -> int:
    """Rewrites, in the graph at `path`, each Gemm with a constant weight (alpha = beta = 1,
    no transA) as MatMul by the (transposed) weight plus Add of the bias; returns how many.

    Why: torch exports a Linear on 2-D input (OPT's FFN) as Gemm, and onnxruntime's
    weight-only quantizers (MatMulNBitsQuantizer: RTN, GPTQ, HQQ) quantize MatMul only, so
    without this the FFN, most of the weights, would stay FP32. The result is the same
    function; `export_causal_lm` checks the rewritten graph against torch."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    new_nodes, rewritten = [], 0
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or uses.get(n.input[1], 0) != 1):
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = np.ascontiguousarray(w.T) if attrs.get("transB", 0) else w
        graph.initializer.remove(inits[n.input[1]])
        graph.initializer.append(numpy_helper.from_array(w, n.input[1]))
        base = n.name or n.output[0]
        if len(n.input) > 2 and n.input[2]:
            mid = f"{n.output[0]}_matmul"
            new_nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mid], name=f"{base}_MatMul"))
            new_nodes.append(helper.make_node("Add", [mid, n.input[2]], [n.output[0]], name=f"{base}_Add"))
        else:
            new_nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [n.output[0]], name=f"{base}_MatMul"))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(new_nodes)
        # shapes recorded for the old layout would contradict the transposed weights
        stale = {i for n in new_nodes if n.op_type == "MatMul" for i in n.input}
        keep = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(keep)
        save_onnx(model, path)
    return rewritten


def cpu_session_options():
    """Returns onnxruntime SessionOptions for a helper session on the CPU (checks,
    calibration passes) with as many threads as torch uses here: a device worker has set
    that to its share of the node, where onnxruntime's default would take every core, once
    per worker."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    return options


def check_against_torch(onnx_model: OnnxModel, model, tokens=None, batch: int = 2, length: int = 64) -> float:
    """Returns max |onnx logits - torch logits| on a (batch, length) input of `tokens`
    (random ids when None), with onnxruntime on the CPU."""
    import numpy as np
    import onnxruntime as ort
    import torch

    length = min(length, onnx_model.max_positions)
    if tokens is not None and len(tokens) >= batch * length:
        ids = tokens[: batch * length].view(batch, length).clone()
    else:
        ids = torch.randint(0, onnx_model.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(onnx_model.path), cpu_session_options(), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: ids.numpy().astype(np.int64)})[0]
    device = next(model.parameters()).device
    with torch.inference_mode():
        want = model(input_ids=ids.to(device), use_cache=False).logits.float().cpu().numpy()
    return float(np.abs(got - want).max())
