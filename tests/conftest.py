"""Shared test set-up: the real data in ../shared/data, no hub, W&B offline, tiny models."""
import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = _REPO.parent / "shared" / "data"
# absolute: tests change directory, and CI passes ../shared/data
os.environ["SWEEPER_DATA_DIR"] = str(Path(os.environ.get("SWEEPER_DATA_DIR") or _SHARED_DATA).resolve())
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real evaluation data folder (SWEEPER_DATA_DIR)."""
    d = Path(os.environ["SWEEPER_DATA_DIR"])
    assert (d / "wikitext-2-raw-v1" / "wiki.test.raw").is_file(), f"real data missing under {d}"
    return d


@pytest.fixture(scope="session")
def tiny_tokenizer(data_dir):
    """A byte-level BPE tokenizer (vocab 512) trained on the real WikiText-2 (tokenized) validation text."""
    from sweeper.data import load_wikitext
    from sweeper.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(load_wikitext("wikitext-2-v1", "validation").text[:300_000], 512)


@pytest.fixture()
def tiny_gpt2(tiny_tokenizer):
    """A randomly initialised 2-layer GPT-2 (n_embd 32, 64 positions) built from a config."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def ref_model_dir(data_dir) -> Path:
    """The built gpt2-ref zoo model (trained once, minutes on a CPU; reused across runs).

    The cache is $SWEEPER_CACHE_DIR when set, else <repo>/.sweeper-cache (git-ignored)."""
    os.environ.setdefault("SWEEPER_CACHE_DIR", str(_REPO / ".sweeper-cache"))
    from sweeper.models import zoo

    return zoo.build("gpt2-ref")


@pytest.fixture(scope="session")
def opt_small_dir(data_dir) -> Path:
    """A short-trained (80 steps) variant of the opt-ref zoo model: a real if weak OPT
    language model, built in well under a minute and cached like ref_model_dir."""
    os.environ.setdefault("SWEEPER_CACHE_DIR", str(_REPO / ".sweeper-cache"))
    from sweeper.models import zoo

    return zoo.build(zoo.tiny_variant("opt-ref", steps=80, eval_max_tokens=4096))


@pytest.fixture(scope="session")
def roberta_tok(data_dir):
    """A RoBERTa-style byte-level BPE tokenizer (vocab 400, <s>/</s>/<pad>/<mask>, pair
    template) trained on the first 100k characters of the real WikiText-2 validation text."""
    from sweeper.data import load_wikitext
    from sweeper.models.encoder import train_roberta_tokenizer

    return train_roberta_tokenizer(load_wikitext("wikitext-2-v1", "validation").text[:100_000], 400, max_length=64)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (tests/browser.py), installed with apt-get when missing; the test
    is skipped, saying why, only where it can't be installed."""
    from tests.browser import Browser, find_browser, install_browser

    chromium, driver = find_browser()
    if not (chromium and driver):
        why = install_browser()
        if why:
            pytest.skip(f"no headless Chromium: {why}")
        chromium, driver = find_browser()
    b = Browser(chromium, driver)
    yield b
    b.close()
