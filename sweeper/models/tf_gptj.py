"""GPT-J in Keras (TF 2.x), built from any transformers GPTJConfig, with the torch weights.

transformers no longer ships TensorFlow models, so the architecture is written here once:
rotary position embeddings on the first `rotary_dim` dims of each head (GPT-J's
interleaved "rotate every two"), attention and MLP in parallel from one shared LayerNorm,
gelu_new, a final LayerNorm and an untied LM head with a bias. Every projection is a 2-D
`MatMul` (+ `BiasAdd`) on the flattened tokens, the pattern Intel Neural Compressor fuses
into quantized MatMul kernels.

`from_torch(model)` copies the weights of a GPTJForCausalLM; `save_saved_model` writes a
SavedModel whose `serving_default` signature takes `input_ids` (int64, [batch, seq]) and
returns `logits` (float32, [batch, seq, vocab]); `check_against_torch` measures the
difference on real token ids.
"""
from __future__ import annotations

import math

from .tf_runtime import onednn_hint, require_tf

INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
SIGNATURE = "serving_default"


def _sinusoid(num_pos: int, dim: int):
    """Returns (sin, cos), each [num_pos, dim // 2] float32, as transformers' GPT-J builds them."""
    import numpy as np

    inv_freq = 1.0 / (10000 ** (np.arange(0, dim, 2, dtype=np.int64) / dim))
    # float32 as torch computes it: inv_freq in float32, positions in float32
    angles = np.arange(num_pos, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def build_keras_gptj(config):
    """Returns an uncompiled keras.Model for a transformers GPTJConfig: input_ids (int,
    [batch, seq]) -> logits (float32, [batch, seq, vocab]); weights freshly initialised
    (load them with `copy_torch_weights`)."""
    tf = require_tf()
    import keras

    d = config.n_embd
    n_head = config.n_head
    head_dim = d // n_head
    rot = config.rotary_dim or head_dim
    inner = config.n_inner if config.n_inner is not None else 4 * d
    eps = config.layer_norm_epsilon
    if config.activation_function not in ("gelu_new", "gelu"):
        raise ValueError(f"GPT-J activation {config.activation_function!r}: only gelu_new and gelu are written here")
    approximate = config.activation_function == "gelu_new"
    sin_np, cos_np = _sinusoid(config.n_positions, rot)

    class Linear(keras.layers.Layer):
        """x [..., n_in] -> x @ W (+ b) as one 2-D MatMul on the flattened rows."""

        def __init__(self, n_in, n_out, bias, **kw):
            super().__init__(**kw)
            self.n_in, self.n_out, self.has_bias = n_in, n_out, bias

        def build(self, input_shape=None):
            self.kernel = self.add_weight(name="kernel", shape=(self.n_in, self.n_out), initializer="glorot_uniform")
            self.bias = self.add_weight(name="bias", shape=(self.n_out,), initializer="zeros") if self.has_bias else None

        def call(self, x):
            lead = tf.shape(x)[:-1]
            y = tf.matmul(tf.reshape(x, [-1, self.n_in]), self.kernel)
            if self.bias is not None:
                y = tf.nn.bias_add(y, self.bias)
            return tf.reshape(y, tf.concat([lead, [self.n_out]], axis=0))

    def rotate_every_two(x):
        x1, x2 = x[..., ::2], x[..., 1::2]
        return tf.reshape(tf.stack([-x2, x1], axis=-1), tf.shape(x))

    def apply_rotary(x, sin, cos):
        # sin/cos [T, rot/2] -> [1, T, 1, rot], each value repeated twice (repeat_interleave)
        sin = tf.repeat(sin, 2, axis=-1)[None, :, None, :]
        cos = tf.repeat(cos, 2, axis=-1)[None, :, None, :]
        return x * cos + rotate_every_two(x) * sin

    class Block(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.ln_1 = keras.layers.LayerNormalization(epsilon=eps, name="ln_1")
            self.q_proj = Linear(d, d, False, name="q_proj")
            self.k_proj = Linear(d, d, False, name="k_proj")
            self.v_proj = Linear(d, d, False, name="v_proj")
            self.out_proj = Linear(d, d, False, name="out_proj")
            self.fc_in = Linear(d, inner, True, name="fc_in")
            self.fc_out = Linear(inner, d, True, name="fc_out")

        def build(self, input_shape=None):
            for layer in (self.ln_1,):
                layer.build((None, None, d))
            for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.fc_in, self.fc_out):
                layer.build()

        def call(self, x, sin, cos, mask):
            b, t = tf.shape(x)[0], tf.shape(x)[1]
            h = self.ln_1(x)
            heads = [b, t, n_head, head_dim]
            q = tf.reshape(self.q_proj(h), heads)
            k = tf.reshape(self.k_proj(h), heads)
            v = tf.reshape(self.v_proj(h), heads)
            if rot < head_dim:
                q = tf.concat([apply_rotary(q[..., :rot], sin, cos), q[..., rot:]], axis=-1)
                k = tf.concat([apply_rotary(k[..., :rot], sin, cos), k[..., rot:]], axis=-1)
            else:
                q, k = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
            q, k, v = (tf.transpose(z, [0, 2, 1, 3]) for z in (q, k, v))  # [B, H, T, Dh]
            scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(head_dim))
            scores = tf.where(mask, scores, tf.float32.min)
            attn = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
            attn = tf.reshape(tf.transpose(attn, [0, 2, 1, 3]), [b, t, d])
            mlp = self.fc_out(tf.nn.gelu(self.fc_in(h), approximate=approximate))
            return self.out_proj(attn) + mlp + x

    class GPTJ(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.wte = keras.layers.Embedding(config.vocab_size, d, name="wte")
            self.blocks = [Block(name=f"h_{i}") for i in range(config.n_layer)]
            self.ln_f = keras.layers.LayerNormalization(epsilon=eps, name="ln_f")
            self.lm_head = Linear(d, config.vocab_size, True, name="lm_head")
            self.sin_table = tf.constant(sin_np)
            self.cos_table = tf.constant(cos_np)

        def call(self, input_ids):
            t = tf.shape(input_ids)[1]
            x = self.wte(input_ids)
            sin, cos = self.sin_table[:t], self.cos_table[:t]
            mask = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)[None, None]
            for block in self.blocks:
                x = block(x, sin, cos, mask)
            return self.lm_head(self.ln_f(x))

    model = GPTJ(name="gptj")
    model.wte.build((None, None))
    for block in model.blocks:
        block.build()
    model.ln_f.build((None, None, d))
    model.lm_head.build()
    return model


def copy_torch_weights(keras_model, torch_model) -> int:
    """Copies a transformers GPTJForCausalLM's weights into a model from `build_keras_gptj`
    (same config); returns the number of parameters copied (all of them, or ValueError)."""
    import numpy as np

    sd = {k: v.detach().float().cpu().numpy() for k, v in torch_model.state_dict().items()}
    copied = 0

    def put(var, array):
        nonlocal copied
        if tuple(var.shape) != array.shape:
            raise ValueError(f"weight {var.path}: keras shape {tuple(var.shape)} vs torch {array.shape}")
        var.assign(np.ascontiguousarray(array))
        copied += array.size

    def ln(layer, prefix):
        put(layer.gamma, sd[f"{prefix}.weight"])
        put(layer.beta, sd[f"{prefix}.bias"])

    def lin(layer, prefix):
        put(layer.kernel, sd[f"{prefix}.weight"].T)  # torch Linear stores [out, in]
        if layer.bias is not None:
            put(layer.bias, sd[f"{prefix}.bias"])

    put(keras_model.wte.embeddings, sd["transformer.wte.weight"])
    for i, block in enumerate(keras_model.blocks):
        p = f"transformer.h.{i}"
        ln(block.ln_1, f"{p}.ln_1")
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(getattr(block, name), f"{p}.attn.{name}")
        lin(block.fc_in, f"{p}.mlp.fc_in")
        lin(block.fc_out, f"{p}.mlp.fc_out")
    ln(keras_model.ln_f, "transformer.ln_f")
    lin(keras_model.lm_head, "lm_head")
    total = sum(int(np.prod(v.shape)) for k, v in sd.items() if not k.endswith(("attn.bias", "attn.masked_bias")))
    if copied != total:
        raise ValueError(f"copied {copied} of the torch model's {total} parameters")
    return copied


def from_torch(torch_model):
    """Returns the Keras GPT-J (see build_keras_gptj) holding `torch_model`'s weights."""
    if getattr(torch_model.config, "model_type", None) != "gptj":
        raise ValueError(f"a GPT-J model (model_type 'gptj') is needed, got {torch_model.config.model_type!r}")
    model = build_keras_gptj(torch_model.config)
    copy_torch_weights(model, torch_model)
    return model


def save_saved_model(keras_model, path) -> None:
    """Writes `keras_model` as a SavedModel at `path` (a folder) through Keras' own
    ExportArchive, with one signature `serving_default`: input_ids (int64, [batch, seq]) ->
    {"logits": float32 [batch, seq, vocab]}."""
    tf = require_tf()
    import keras

    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(name=SIGNATURE, fn=lambda input_ids: {OUTPUT_NAME: keras_model(input_ids)},
                         input_signature=[tf.TensorSpec([None, None], tf.int64, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)


def load_signature(path):
    """Returns a callable input_ids (numpy int64 [batch, seq]) -> logits (numpy float32) for the
    SavedModel at `path`, through its serving signature."""
    tf = require_tf()

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SIGNATURE]

    def run(ids):
        try:
            return fn(**{INPUT_NAME: tf.constant(ids, tf.int64)})[OUTPUT_NAME].numpy()
        except tf.errors.InternalError as exc:
            if "Missing 0-th output" not in str(exc):
                raise
            raise RuntimeError(f"the SavedModel at {path} has an INT8 kernel that produced no output."
                               + (onednn_hint() or " oneDNN was on; see the error above.")) from exc

    run.loaded = loaded  # keeps the trackable (and its variables) alive with the callable
    return run


def check_against_torch(run, torch_model, tokens, lengths=(8, 37, 128), batch: int = 2) -> dict:
    """Returns {length: max |tf logits - torch logits|} for a callable `run` (numpy ids ->
    numpy logits) on (batch, length) blocks of real token ids `tokens` (1-D), per length."""
    import numpy as np
    import torch

    out = {}
    max_pos = torch_model.config.n_positions
    for length in lengths:
        length = min(length, max_pos)
        ids = np.asarray(tokens[: batch * length], dtype=np.int64).reshape(batch, length)
        with torch.inference_mode():
            want = torch_model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()
        out[length] = float(np.abs(np.asarray(run(ids)) - want).max())
    return out
