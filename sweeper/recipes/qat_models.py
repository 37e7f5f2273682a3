"""How a transformers model is made ready for aimet QuantSim (see aimet_qat's docstring for
why each step is needed): GELU modules aimet knows, a wrapper whose forward returns a tuple
of tensors (QuantSim traces with torch.jit and refuses ModelOutput objects), and, for
sequence classifiers, an additive attention mask with its own quantizer added to the scores
by an aimet Add.

Imports torch and aimet-torch at module level (aimet takes seconds to import): import it
inside a recipe, not at registration time. The wrappers are module-level classes, so a
QuantSim model holding them pickles by reference.
"""
from __future__ import annotations

import torch
from aimet_torch.nn.modules.custom import Add, Multiply

from ..tasks.glue import classification_loss

ATTENTION_IMPL = "sweeper_masked_eager"


class CausalLMTupleOutput(torch.nn.Module):
    """Wraps a transformers causal LM: forward(input_ids, labels=None) returns (logits,) or
    (loss, logits), like transformers' return_dict=False. It passes an all-ones attention
    mask (what unpadded blocks mean) so transformers skips its packed-sequence path."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.config = lm.config

    def forward(self, input_ids, labels=None):
        out = self.lm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                      labels=labels, use_cache=False, return_dict=True)
        return (out.logits,) if labels is None else (out.loss, out.logits)


class ClassifierTupleOutput(torch.nn.Module):
    """Wraps a transformers sequence classifier: forward(input_ids, attention_mask=None,
    labels=None) returns (logits,) or (loss, logits). The 0/1 padding mask becomes the
    additive (batch, 1, 1, seq) mask `mask_scale((1 - mask), value)`: 0 on real tokens,
    `mask_value` on padded ones (None: the float dtype's minimum)."""

    def __init__(self, clf, mask_value: float | None):
        super().__init__()
        self.clf = clf
        self.config = clf.config
        value = torch.finfo(torch.float32).min if mask_value is None else float(mask_value)
        self.register_buffer("mask_value", torch.tensor(value, dtype=torch.float32))
        self.mask_scale = Multiply()  # aimet quantizes its output: the mask's own quantizer

    def forward(self, input_ids, attention_mask=None, labels=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        padded = 1.0 - attention_mask[:, None, None, :].to(self.mask_value.dtype)
        additive = self.mask_scale(padded, self.mask_value)
        logits = self.clf(input_ids=input_ids, attention_mask=additive, return_dict=True).logits
        return (logits,) if labels is None else (classification_loss(logits, labels), logits)


def masked_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, except that the mask is added to the scores by the
    attention module's `score_add` (an aimet elementwise Add, so the masked scores, softmax's
    input, get an activation quantizer) where it has one. Returns (output, probabilities)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        add = getattr(module, "score_add", None)
        scores = add(scores, attention_mask) if add is not None else scores + attention_mask
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def prepare_classifier(clf, mask_value: float | None) -> ClassifierTupleOutput:
    """Returns the QuantSim-ready wrapper of sequence classifier `clf` (modified in place:
    pass a copy): every self-attention module (one with query, key and scaling) gets a
    `score_add` module and the model runs masked_eager_attention; the wrapper turns 0/1
    padding masks into additive ones with `mask_value` (None: the dtype's minimum)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_IMPL, masked_eager_attention)
    for m in clf.modules():
        if all(hasattr(m, a) for a in ("query", "key", "scaling")):
            m.score_add = Add()
    clf.config._attn_implementation = ATTENTION_IMPL
    return ClassifierTupleOutput(clf, mask_value)


def replace_gelu_modules(model) -> int:
    """Replaces transformers' GELU modules (tanh approximation, and the exact erf GELU that
    BERT/RoBERTa use) in `model` with torch.nn.GELU of the same formula (aimet only knows
    torch's); returns how many were replaced."""
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
