"""GPTQ's weight update against the paper's claim, on a trained model's real activations:
it lowers the layer's output error ||X (W - Q)|| below round-to-nearest on the same grid.
onnxruntime 1.32's own port does not (it propagates no error), which is why the recipe
replaces it; if this test's second half fails, onnxruntime fixed it and the patch can go."""
import numpy as np
import pytest
import torch

from sweeper.recipes.gptq_update import gptq


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


def _rtn(W, bits, group):
    from onnxruntime.quantization.neural_compressor.weight_only import gptq as port

    # with an identity Hessian there is nothing to propagate: GPTQ's grid, rounded
    return port(W.copy(), np.eye(W.shape[0]), num_bits=bits, group_size=group, scheme="sym", percdamp=0.0)


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_beats_round_to_nearest_on_every_layer(layers, group):
    for name, (X, W) in layers.items():
        H = 2 * X.T @ X / len(X)
        err_rtn = np.linalg.norm(X @ (W - _rtn(W, 4, group)))
        err_gptq = np.linalg.norm(X @ (W - gptq(W.copy(), H.copy(), num_bits=4, group_size=group, scheme="sym")))
        assert err_gptq < 0.9 * err_rtn, (name, err_gptq / err_rtn)


def test_identity_hessian_is_round_to_nearest(layers):
    _, W = next(iter(layers.values()))
    got = gptq(W.copy(), np.eye(W.shape[0]), num_bits=4, group_size=32, scheme="sym", percdamp=0.0)
    assert np.allclose(got, _rtn(W, 4, 32), atol=1e-6)


def test_onnxruntime_port_propagates_no_error(layers):
    from onnxruntime.quantization.neural_compressor.weight_only import gptq as port

    X, W = layers["model.decoder.layers.0.fc2"]
    H = 2 * X.T @ X / len(X)
    got = port(W.copy(), H.copy(), num_bits=4, group_size=32, scheme="sym")
    assert np.allclose(got, _rtn(W, 4, 32), atol=1e-6)  # the upstream bug this module works around


def test_recipe_uses_the_paper_update(monkeypatch):
    from onnxruntime.quantization.neural_compressor import weight_only

    from sweeper.recipes.gptq_update import patched_onnxruntime_gptq

    original = weight_only.gptq
    with patched_onnxruntime_gptq():
        assert weight_only.gptq is gptq
    assert weight_only.gptq is original
