"""Export of a torch GPT-J causal LM to a TensorFlow SavedModel, and the handle the TF
recipes and tasks pass around.

The Keras model (`tf_gptj.py`) gets the torch weights, is checked against torch on real
token ids at several lengths, written as a SavedModel (serving signature: input_ids ->
logits), reloaded and checked again: the reloaded graph is what recipes and tasks use.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tf_gptj import INPUT_NAME, OUTPUT_NAME, SIGNATURE  # noqa: F401  (re-exported for tasks)

MIB = float(1 << 20)
CHECK_LENGTHS = (8, 37, 128)


@dataclass
class TFSavedModel:
    """A TensorFlow SavedModel of a causal LM on disk (`path` is its folder), whose
    `serving_default` signature maps input_ids (int64 [batch, seq]) to logits.

    max_positions: longest sequence it accepts, in tokens. vocab_size: logits width.
    source_key: content key of the torch weights it came from. info: how it was made."""

    path: Path
    max_positions: int
    vocab_size: int
    source_key: str = ""
    info: dict = field(default_factory=dict)

    def size_mb(self) -> float:
        """Returns the SavedModel's size on disk (all files under it) in MB of 2**20 bytes."""
        return sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file()) / MIB

    def derived(self, path, **info) -> "TFSavedModel":
        """Returns a handle for a model made from this one (a quantized copy) at `path`."""
        return TFSavedModel(Path(path), self.max_positions, self.vocab_size, self.source_key, {**self.info, **info})

    def runner(self):
        """Returns a callable numpy int64 ids [batch, seq] -> numpy float32 logits through the
        serving signature (the SavedModel is loaded once per call of this method)."""
        from .tf_gptj import load_signature

        return load_signature(self.path)


def export_saved_model(torch_model, out_dir, *, source_key: str = "", check_tokens=None,
                       lengths=CHECK_LENGTHS, tolerance: float = 1e-4, log=print) -> TFSavedModel:
    """Writes `torch_model` (a transformers GPTJForCausalLM) as a SavedModel in `out_dir`
    (replaced) and returns its handle. The Keras model and the reloaded SavedModel are
    both checked against torch on (2, L) blocks of `check_tokens` (real token ids, 1-D;
    random ids when None) for each L in `lengths`; a max |logit difference| above
    `tolerance` raises ValueError. info holds the differences (in logits) and the time (s)."""
    import numpy as np

    from .onnx_export import max_positions_of
    from .tf_gptj import check_against_torch, from_torch, save_saved_model

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    max_pos = max_positions_of(torch_model)
    vocab = torch_model.get_output_embeddings().weight.shape[0]
    if check_tokens is None or len(check_tokens) < 2 * max(lengths):
        check_tokens = np.random.default_rng(0).integers(0, vocab, 2 * max(lengths))
    check_tokens = np.asarray(check_tokens)
    was_training = torch_model.training
    torch_model.eval()
    t0 = time.perf_counter()
    try:
        keras_model = from_torch(torch_model)

        def keras_run(ids):
            return keras_model(ids).numpy()

        keras_diff = check_against_torch(keras_run, torch_model, check_tokens, lengths)
        save_saved_model(keras_model, out_dir)
        seconds = time.perf_counter() - t0
        model = TFSavedModel(out_dir, max_pos, vocab, source_key)
        saved_diff = check_against_torch(model.runner(), torch_model, check_tokens, lengths)
    finally:
        torch_model.train(was_training)
    worst = max(list(keras_diff.values()) + list(saved_diff.values()))
    if worst > tolerance:
        raise ValueError(f"tf export: max |logit diff| vs torch {worst:.2e} > {tolerance:g} "
                         f"(keras {keras_diff}, saved model {saved_diff})")
    import tensorflow as tf

    model.info.update({"exporter": f"keras {_keras_version()} ExportArchive (tensorflow {tf.__version__})",
                       "export_seconds": round(seconds, 2),
                       "keras_max_abs_logit_diff": {str(k): v for k, v in keras_diff.items()},
                       "saved_model_max_abs_logit_diff": {str(k): v for k, v in saved_diff.items()},
                       "fp32_size_mb": round(model.size_mb(), 3)})
    log(f"tf: exported {type(torch_model).__name__} to a SavedModel in {seconds:.1f}s, {model.size_mb():.1f} MB; "
        f"max |logit diff| vs torch {worst:.2e} over lengths {list(lengths)}")
    return model


def _keras_version() -> str:
    import keras

    return keras.__version__


def real_check_tokens(tokenizer, n_tokens: int = 512):
    """Returns the first `n_tokens` token ids (numpy int64) of the WikiText-2 test text:
    real text to compare logits on (never trained on, never calibrated on)."""
    import numpy as np

    from ..data import load_wikitext

    text = load_wikitext("wikitext-2-raw-v1", "test").text[: 40 * n_tokens]
    return np.asarray(tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"][:n_tokens], np.int64)


def export_loaded(loaded, out_dir, log=print) -> TFSavedModel:
    """Returns the SavedModel export (see export_saved_model) of a models.loading.LoadedModel,
    checked against torch on real WikiText-2 test text."""
    from .tf_runtime import require_tf

    require_tf()
    return export_saved_model(loaded.model, out_dir, source_key=loaded.content_key,
                              check_tokens=real_check_tokens(loaded.tokenizer), log=log)
