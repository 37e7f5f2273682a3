"""The reference model zoo and model loading: a real trained gpt2-ref, deterministic builds."""
import json
import math
from pathlib import Path

import pytest
import torch

from sweeper.errors import ModelNotFoundError
from sweeper.jobs import JobContext
from sweeper.models import zoo
from sweeper.models.loading import content_key, load_model, resolve_default_model
from sweeper.tasks.perplexity import WikiText2PPL, tokenize_split, wikitext2_perplexity


def test_card_reports_a_real_language_model(ref_model_dir):
    card = json.loads((ref_model_dir / "card.json").read_text())
    assert card["name"] == "gpt2-ref" and card["family"] == "gpt2"
    assert card["training"]["split"] != "test" and card["training"]["split"] in ("train", "validation")
    ev = card["eval_settings"]
    assert (ev["split"], ev["context_length"], ev["stride"], ev["max_tokens"]) == ("test", 128, 64, None)
    assert card["wikitext2_test_ppl"] < 0.5 * card["unigram_ppl"], (card["wikitext2_test_ppl"], card["unigram_ppl"])
    assert 1 < card["wikitext2_test_ppl"] < card["architecture"]["vocab_size"]
    assert card["parameter_count"] > 100_000 and card["training"]["steps"] > 0 and card["seconds"] > 0
    assert card["unigram_settings"]["tokens"] == card["wikitext2_scored_tokens"]


def test_entry_files_are_safetensors_only(ref_model_dir):
    names = {p.name for p in ref_model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "card.json", "tokenizer.json", "COMPLETE"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert zoo.zoo_path("gpt2-ref") == ref_model_dir
    assert [c["name"] for c in zoo.list_built() if c["path"] == str(ref_model_dir)] == ["gpt2-ref"]
    assert "gpt2-ref" in zoo.zoo_names()


def _independent_ppl(model, ids, ctx_len, stride):
    """Sliding-window perplexity computed by hand, one window at a time, with log_softmax."""
    nll, n, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx_len, len(ids))
            first = max(prev_end, begin + 1)
            logp = torch.log_softmax(model(ids[begin:end][None]).logits[0].double(), -1)
            for pos in range(first, end):
                nll -= logp[pos - begin - 1, ids[pos]].item()
                n += 1
            prev_end = end
            if end == len(ids):
                break
    return math.exp(nll / n), n


def test_loaded_model_perplexity_matches_recomputation(ref_model_dir):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    lm = load_model("gpt2-ref")
    assert (lm.name, lm.source, lm.path) == ("gpt2-ref", "zoo", str(ref_model_dir))
    assert len(lm.content_key) == 64 and lm.content_key == content_key(ref_model_dir)
    ctx = JobContext(device=torch.device("cpu"), tokenizer=lm.tokenizer)
    res = wikitext2_perplexity(lm.model, WikiText2PPL(split="test", max_tokens=3000), ctx)

    model = GPT2LMHeadModel.from_pretrained(str(ref_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(ref_model_dir))
    ids, _ = tokenize_split(tok, "wikitext-2-raw-v1", "test")
    ppl, n = _independent_ppl(model, ids[:3000], 128, 64)
    assert res["wikitext2_scored_tokens"] == n == 2999
    assert abs(res["wikitext2_ppl"] - ppl) <= 1e-6 * ppl, (res["wikitext2_ppl"], ppl)
    assert res["wikitext2_ppl"] < 1000  # a trained model, not random weights (~vocab size 4096)

    # the same directory loaded as a local path: same weights, same key
    local = load_model(str(ref_model_dir))
    assert local.source == "local" and local.content_key == lm.content_key
    assert all(torch.equal(a, b) for a, b in zip(local.model.state_dict().values(), lm.model.state_dict().values()))


def test_build_is_deterministic(tmp_path, monkeypatch):
    spec = zoo.tiny_variant("gpt2-ref", steps=6, eval_max_tokens=1024)
    paths = []
    for sub in ("a", "b"):
        monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / sub))
        paths.append(zoo.build(spec, log=lambda s: None))
    a, b = paths
    assert a.name == b.name and a != b
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    ca, cb = (json.loads((p / "card.json").read_text()) for p in (a, b))
    assert ca["wikitext2_test_ppl"] == cb["wikitext2_test_ppl"] and ca["unigram_ppl"] == cb["unigram_ppl"]
    assert ca["training"]["steps"] == 6 and ca["eval_settings"]["max_tokens"] == 1024
    # the weights did move away from the seeded initialisation
    from transformers import AutoModelForCausalLM

    init = zoo._make_model(spec, load_model(str(a)).tokenizer).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(str(a)).state_dict()
    assert not torch.equal(init["transformer.h.0.mlp.c_fc.weight"], trained["transformer.h.0.mlp.c_fc.weight"])
    # a second build() call reuses the entry; force=True rebuilds identical weights
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "a"))
    mtime = (a / "COMPLETE").stat().st_mtime_ns
    assert zoo.build(spec, log=lambda s: None) == a and (a / "COMPLETE").stat().st_mtime_ns == mtime
    assert (zoo.build(spec, force=True, log=lambda s: None) / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_unknown_model_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as ei:
        load_model("no-such-org/no-such-model-1234")
    msg = str(ei.value)
    assert "\n" not in msg and "no-such-org/no-such-model-1234" in msg and "gpt2-ref" in msg
    assert "not a zoo name" in msg and "not a local directory" in msg and "hub failed" in msg
    with pytest.raises(ModelNotFoundError) as ei:
        load_model("zoo:nope")
    assert "\n" not in str(ei.value) and "gpt2-ref" in str(ei.value)
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="not built"):
        load_model("gpt2-ref", build_missing=False)


def test_resolve_default_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_default_model("no-such-org/no-such-model-1234") == "gpt2-ref"
    assert resolve_default_model(str(tmp_path)) == str(tmp_path)
    assert resolve_default_model("gpt2-ref", "x") == "gpt2-ref"


def test_cli_zoo_list_shows_the_built_model(ref_model_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "zoo", "list"], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.split() and ln.split()[0] in zoo.zoo_names()}
    card = json.loads((ref_model_dir / "card.json").read_text())
    assert f"{card['wikitext2_test_ppl']:.2f}" in lines["gpt2-ref"] and str(ref_model_dir) in lines["gpt2-ref"]
    assert "42% in matmuls" in lines["gpt2-ref"]  # 393,216 of 937,472: the rest is the FP32 embedding
    # every registered model has a line, built or not, with its matmul share
    assert set(lines) == set(zoo.zoo_names()) and "86% in matmuls" in lines["gpt2-ref-m"]


def test_small_spec_hashes_are_unchanged():
    # The cache key of every user's built gpt2-ref/opt-ref: a change retrains them everywhere.
    assert zoo.get_spec("gpt2-ref").spec_hash() == "120d38a54545"
    assert zoo.get_spec("opt-ref").spec_hash() == "e1e30d3e5ee1"


def test_m_specs_put_most_parameters_in_matmuls():
    for name in ("gpt2-ref-m", "opt-ref-m"):
        spec = zoo.get_spec(name)
        counts = zoo.spec_parameter_counts(spec)
        assert counts["matmul_fraction"] > 0.6 and counts["matmul"] > 10 * zoo.spec_parameter_counts(name[:-2])["matmul"]
        assert counts["matmul"] + counts["embedding"] < counts["total"]  # norms and biases are the rest
        assert spec.seq_len >= 256 and spec.holdout_tokens > 0 and spec.spec_hash() != zoo.get_spec(name[:-2]).spec_hash()
    assert zoo.spec_parameter_counts("gpt2-ref")["matmul_fraction"] < 0.5


def test_device_is_validated(capsys):
    from sweeper.cli import main
    from sweeper.errors import ConfigError, DeviceUnavailable

    with pytest.raises(ConfigError, match="device='tpu'"):
        zoo.build(zoo.tiny_variant("gpt2-ref"), device="tpu")
    assert main(["zoo", "build", "gpt2-ref", "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "device='tpu'" in err and "'auto', 'cpu', 'cuda'" in err
    assert zoo.resolve_device("cpu") == torch.device("cpu")
    assert zoo.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="sees no CUDA device"):
            zoo.build(zoo.tiny_variant("gpt2-ref"), device="cuda")


def test_m_variant_trains_on_cpu_keeping_the_best_held_out_step(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweeper.data.wikitext import load_training_text

    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path))
    # the -m recipe (256 positions, dropout, held-out selection) on a narrow model, for speed
    narrow = {**zoo.get_spec("gpt2-ref-m").config_kwargs, "n_embd": 64, "n_layer": 2, "n_head": 2, "n_inner": 256}
    spec = zoo.tiny_variant("gpt2-ref-m", steps=4, batch_size=2, select_every=2, holdout_tokens=512,
                            eval_max_tokens=600, eval_batch_size=4, config=tuple(sorted(narrow.items())))
    lines = []
    path = zoo.build(spec, device="cpu", log=lines.append)
    card = json.loads((path / "card.json").read_text())
    assert card["device"]["type"] == "cpu" and card["device"]["name"] and card["eval_settings"]["device"] == "cpu"
    assert card["parameter_count"] == card["parameter_counts"]["total"]
    assert {k: card["parameter_counts"][k] for k in ("total", "matmul")} == {
        k: zoo.spec_parameter_counts(spec)[k] for k in ("total", "matmul")}
    tr = card["training"]
    assert tr["tokens_per_second"] > 0 and tr["seconds"] > 0 and tr["deterministic_algorithms"] is False
    sel = tr["selection"]
    assert [r["step"] for r in sel["holdout_nll"]] == [2, 4] and sel["holdout_tokens"] == 512
    best = min(sel["holdout_nll"], key=lambda r: r["holdout_nll"])
    assert sel["selected_step"] == best["step"]
    assert any("tokens/s" in ln and "eta" in ln and "step 4/4" in ln for ln in lines)
    # the saved weights are the selected step's: their loss on the held-out tokens is the one recorded
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = torch.tensor(tok(load_training_text(spec.train_sources).text)["input_ids"])
    held = ids[-512:].view(2, 256)
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        assert abs(model(input_ids=held, labels=held).loss.item() - best["holdout_nll"]) < 1e-4
    assert len(ids) - 512 == tr["tokens"]


def _carried_copy(src: Path, dest: Path) -> Path:
    """A copy of a built entry, as brought back from another machine."""
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_import_puts_an_entry_built_elsewhere_into_the_cache(ref_model_dir, tmp_path, monkeypatch, capsys):
    from sweeper.cache import is_complete
    from sweeper.cli import main
    from sweeper.errors import ConfigError

    carried = _carried_copy(ref_model_dir, tmp_path / "from-gpu" / ref_model_dir.name)
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "here"))
    assert zoo.zoo_path("gpt2-ref") is None
    assert main(["zoo", "import", str(carried)]) == 0
    assert "imported into" in capsys.readouterr().out
    dest = zoo.zoo_path("gpt2-ref")
    assert dest == tmp_path / "here" / "zoo" / ref_model_dir.name and is_complete(dest)
    assert (dest / "model.safetensors").read_bytes() == (ref_model_dir / "model.safetensors").read_bytes()
    lm = load_model("gpt2-ref", build_missing=False)  # found in the cache, not rebuilt
    assert lm.source == "zoo" and lm.content_key == content_key(ref_model_dir)
    assert zoo.import_entry(carried) == (dest, False)  # already there

    # a file changed in the copy: its COMPLETE manifest catches it
    bad = _carried_copy(carried, tmp_path / "bad1")
    (bad / "tokenizer.json").write_text((bad / "tokenizer.json").read_text()[:-10])
    with pytest.raises(ConfigError, match="manifest"):
        zoo.import_entry(bad, force=True)
    # another spec's entry, without a manifest
    bad = _carried_copy(carried, tmp_path / "bad2")
    (bad / "COMPLETE").unlink()
    card = json.loads((bad / "card.json").read_text())
    (bad / "card.json").write_text(json.dumps({**card, "spec_hash": "0123456789ab"}))
    with pytest.raises(ConfigError, match="spec_hash='0123456789ab'.*120d38a54545"):
        zoo.import_entry(bad)
    (bad / "card.json").write_text(json.dumps(card))
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="readable safetensors"):
        zoo.import_entry(bad)
    (bad / "model.safetensors").unlink()
    capsys.readouterr()  # drop the loading progress bars above
    assert main(["zoo", "import", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing: model.safetensors" in err
    assert zoo.zoo_path("gpt2-ref") == dest and is_complete(dest)  # failed imports left it alone
