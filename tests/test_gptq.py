"""GPTQ's weight update against the paper's claim, on a trained model's real activations:
it lowers the layer's output error ||X (W - Q)|| below round-to-nearest on the same grid,
with and without act-order, and with an identity Hessian it is round-to-nearest."""
import numpy as np
import pytest
import torch

from sweeper.recipes.gptq_update import gptq, group_grid, rtn


@pytest.fixture(scope="module")
def layers(opt_small_dir):
    """{name: (X [tokens, K], W [K, N])} for each linear layer of the small trained OPT,
    X captured on WikiText-2 validation text (the calibration split)."""
    from sweeper.data import load_wikitext
    from sweeper.models.loading import load_model

    loaded = load_model(str(opt_small_dir))
    model = loaded.model.eval()
    ids = loaded.tokenizer(load_wikitext("wikitext-2-v1", "validation").text[:40_000])["input_ids"][: 8 * 128]
    acts: dict = {}

    def keep(name):
        def hook(module, inp, out):  # returns None: the module's output stays as it is
            acts[name] = inp[0].reshape(-1, inp[0].shape[-1])
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    with torch.no_grad():
        model(input_ids=torch.tensor(ids).view(8, 128))
    for h in hooks:
        h.remove()
    mods = dict(model.named_modules())
    return {n: (x.double().numpy(), mods[n].weight.detach().double().numpy().T) for n, x in acts.items()}


@pytest.mark.parametrize("group,symmetric,act_order", [(32, True, False), (128, True, False), (32, False, False),
                                                        (32, True, True)])
def test_gptq_beats_round_to_nearest_on_every_layer(layers, group, symmetric, act_order):
    for name, (X, W) in layers.items():
        H = 2 * X.T @ X / len(X)
        err_rtn = np.linalg.norm(X @ (W - rtn(W, 4, group, symmetric).dequantize()))
        q = gptq(W, H, bits=4, group_size=group, symmetric=symmetric, act_order=act_order)
        err_gptq = np.linalg.norm(X @ (W - q.dequantize()))
        assert err_gptq < 0.9 * err_rtn, (name, err_gptq / err_rtn)


def test_identity_hessian_is_round_to_nearest(layers):
    _, W = next(iter(layers.values()))
    for symmetric in (True, False):
        got = gptq(W, np.eye(W.shape[0]), bits=4, group_size=32, symmetric=symmetric, percdamp=0.0)
        want = rtn(W, 4, 32, symmetric)
        assert np.array_equal(got.codes, want.codes) and np.array_equal(got.scales, want.scales)


def test_codes_lie_on_the_grid_and_act_order_keeps_contiguous_groups(layers):
    X, W = layers["model.decoder.layers.0.fc2"]
    H = 2 * X.T @ X / len(X)
    q = gptq(W, H, bits=4, group_size=32, symmetric=False, act_order=True)
    assert q.codes.max() <= 15 and q.scales.shape == (W.shape[0] // 32, W.shape[1])
    for g in range(q.scales.shape[0]):  # static groups: each contiguous group's grid from the original weights
        scale, zero = group_grid(W[g * 32:(g + 1) * 32], 4, symmetric=False)
        assert np.array_equal(q.scales[g], scale) and np.array_equal(q.zeros[g], zero)
    sym = group_grid(np.array([[-1.5], [0.3]]), 4, symmetric=True)
    assert np.isclose(sym[0][0], 3 / 15) and sym[1][0] == 8  # GPTQ's symmetric grid: 2 max|w| / 15, zero 8
