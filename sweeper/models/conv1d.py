"""GPT-2's `Conv1D` -> `torch.nn.Linear`, for quantizers that only know standard layers.

transformers' `Conv1D` (transformers.pytorch_utils.Conv1D, used by GPT-2 for c_attn,
c_proj, c_fc) is a linear layer whose weight is stored transposed: (in, out). aimet-torch
2.x has no quantized definition for it, so QuantSim would leave those layers unquantized.
"""
from __future__ import annotations


def convert_conv1d_to_linear(model) -> int:
    """Replaces every transformers `Conv1D` in `model`, in place, with an equivalent
    `torch.nn.Linear` (weight transposed, bias copied; same dtype, device and
    requires_grad). Returns the number of layers replaced."""
    import torch
    from transformers.pytorch_utils import Conv1D

    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, Conv1D)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        nx, nf = conv.weight.shape  # Conv1D weight is (in_features, out_features)
        linear = torch.nn.Linear(nx, nf, bias=conv.bias is not None,
                                 device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        linear.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            linear.bias.requires_grad_(conv.bias.requires_grad)
        linear.train(conv.training)
        setattr(parent, child, linear)
    return len(targets)
