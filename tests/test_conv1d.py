"""convert_conv1d_to_linear: GPT-2's Conv1D layers become exactly equivalent nn.Linear."""
import torch
from transformers.pytorch_utils import Conv1D

from sweeper.models.conv1d import convert_conv1d_to_linear


def test_conv1d_to_linear_keeps_logits(tiny_gpt2, tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("The tower is 324 metres tall, about the same height as an 81-storey building.")["input_ids"]])
    with torch.no_grad():
        before = tiny_gpt2(input_ids=ids).logits.clone()
    n_layer = tiny_gpt2.config.n_layer
    n = convert_conv1d_to_linear(tiny_gpt2)
    assert n == 4 * n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert not any(isinstance(m, Conv1D) for m in tiny_gpt2.modules())
    attn = tiny_gpt2.transformer.h[0].attn.c_attn
    assert type(attn) is torch.nn.Linear and attn.weight.shape == (3 * 32, 32)
    with torch.no_grad():
        after = tiny_gpt2(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    assert convert_conv1d_to_linear(tiny_gpt2) == 0
