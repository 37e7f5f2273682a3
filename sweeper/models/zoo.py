"""Reference language models the library trains itself, on a CPU, from real WikiText-2 text.

Each zoo model is described by a frozen ``ZooSpec`` (architecture, tokenizer vocabulary,
training settings). ``build(name)`` trains it deterministically (fixed seed, fixed data
order) on WikiText-2 text that is never the test split, evaluates its WikiText-2 **test**
perplexity and a unigram baseline on the same tokenizer, and stores everything in the
on-disk cache (``cache_root()/zoo/<name>-<spec hash>``): ``model.safetensors``,
``config.json``, the tokenizer files and ``card.json``.

Bit-for-bit reproducibility holds for the same spec, training text, library versions,
hardware and thread count (the card records the thread count).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cache import build_once, cache_root, is_complete
from ..data.wikitext import TRAINING_SOURCES as TRAIN_SOURCES
from ..data.wikitext import load_training_text
from ..errors import ConfigError

# Bump when the training or evaluation code changes what a build produces.
BUILD_VERSION = 1

FAMILIES = ("gpt2", "opt")


@dataclass(frozen=True)
class ZooSpec:
    """What a reference model is and how it is trained.

    config: architecture keyword arguments for the family's transformers config, as sorted
    (key, value) pairs (vocab size and positions are added from `vocab_size`/`seq_len`).
    seq_len: training sequence length = the model's positions, in tokens.
    batch_size: sequences per step. steps: optimizer steps. lr: peak AdamW learning rate,
    reached after `warmup_frac * steps` linear warmup steps, then cosine decay to
    `min_lr_frac * lr`. eval_max_tokens: evaluate only the first N test tokens (None: all;
    only for test-sized variants).
    """

    name: str
    family: str
    config: tuple[tuple[str, object], ...]
    vocab_size: int
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 1000
    lr: float = 3e-3
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_batch_size: int = 64
    eval_max_tokens: int | None = None
    train_sources: tuple[tuple[str, str], ...] = TRAIN_SOURCES
    description: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"zoo spec {self.name}", "family", self.family, "one of " + ", ".join(FAMILIES))
        if any(split == "test" for _, split in self.train_sources):
            raise ConfigError(f"zoo spec {self.name}", "train_sources", self.train_sources, "splits other than 'test'")

    @property
    def config_kwargs(self) -> dict:
        """Returns the architecture keyword arguments as a dict."""
        return dict(self.config)

    def spec_hash(self) -> str:
        """Returns a 12-hex-digit hash of the spec (and the build code version): the cache key."""
        d = dataclasses.asdict(self)
        d.pop("description")
        blob = json.dumps({"build_version": BUILD_VERSION, "spec": d}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_ZOO: dict[str, ZooSpec] = {}


def register(spec: ZooSpec) -> ZooSpec:
    """Adds `spec` to the zoo registry under its name; returns it."""
    _ZOO[spec.name] = spec
    return spec


register(ZooSpec(
    name="gpt2-ref",
    family="gpt2",
    config=tuple(sorted(dict(n_embd=128, n_layer=2, n_head=4, n_inner=512, resid_pdrop=0.0, embd_pdrop=0.0,
                             attn_pdrop=0.0).items())),
    vocab_size=4096,
    seq_len=128,
    batch_size=16,
    steps=400,  # ~2 min on 2 cores; test perplexity stays far below half the unigram's
    lr=3e-3,
    eval_batch_size=64,
    description="GPT-2 architecture, 2 layers, 128 wide, 4 heads, 128 positions, own 4096-token byte-level BPE",
))


register(ZooSpec(
    name="opt-ref",
    family="opt",
    config=tuple(sorted(dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                             word_embed_proj_dim=128, dropout=0.0, attention_dropout=0.0,
                             activation_dropout=0.0).items())),
    vocab_size=4096,
    seq_len=128,
    batch_size=16,
    steps=400,  # same budget as gpt2-ref: ~2 min on 2 cores
    lr=3e-3,
    eval_batch_size=64,
    description="OPT architecture (OPTForCausalLM), 2 layers, 128 wide, 4 heads, ReLU FFN 512, 128 positions, "
                "own 4096-token byte-level BPE",
))


def zoo_names() -> list[str]:
    """Returns the names of the registered zoo models, sorted."""
    return sorted(_ZOO)


def get_spec(name: str) -> ZooSpec:
    """Returns the spec registered under `name` (a leading 'zoo:' is ignored); raises ConfigError."""
    name = name[4:] if name.startswith("zoo:") else name
    if name not in _ZOO:
        raise ConfigError("zoo", "name", name, "one of " + ", ".join(zoo_names()))
    return _ZOO[name]


def entry_path(spec: ZooSpec | str) -> Path:
    """Returns the cache directory a spec is (or would be) built into."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    return cache_root() / "zoo" / f"{spec.name}-{spec.spec_hash()}"


def zoo_path(name: str | ZooSpec) -> Path | None:
    """Returns the directory of the built, complete entry for the current spec, or None."""
    p = entry_path(name)
    return p if is_complete(p) else None


def list_built() -> list[dict]:
    """Returns the cards (card.json contents, plus 'path') of every complete zoo entry in the
    cache, sorted by directory name; entries of older specs are included."""
    root = cache_root() / "zoo"
    cards = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "card.json").is_file() and is_complete(d):
                card = json.loads((d / "card.json").read_text())
                card["path"] = str(d)
                cards.append(card)
    return cards


def build(name: str | ZooSpec, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Returns the cache directory of the trained zoo model `name` (a registered name or a
    ZooSpec), training it first when it is not built yet (or when `force`). Progress lines
    go to `log`. Another process building the same entry at the same time waits for it."""
    spec = get_spec(name) if isinstance(name, str) else name
    path = entry_path(spec)
    if not force and is_complete(path):
        return path
    shared = os.environ.get(SHARED_ZOO_ENV)

    def make(out: Path) -> None:
        if shared and not force and fetch_shared(path.name, shared, out):
            log(f"zoo: copied {spec.name} from {shared}")
            return
        log(f"zoo: building {spec.name} into {path}")
        _build_into(spec, out, log)

    return build_once(path, make, force=force)


# A folder URI (the sweep's storage) where built entries are shared by every node of a
# cluster: set by the sweep for its workers, so a model is trained once per cluster.
SHARED_ZOO_ENV = "SWEEPER_SHARED_ZOO"


def fetch_shared(entry: str, shared_uri: str, out: Path) -> bool:
    """Copies the shared copy of cache entry `entry` into `out` (not its COMPLETE marker);
    returns True when a complete copy was there and its files match its marker's manifest,
    False (and `out` emptied) otherwise."""
    import shutil

    from ..cache import MARKER, manifest
    from ..storage import fetch_tree, read_bytes

    marker = read_bytes(f"{shared_uri.rstrip('/')}/{entry}/{MARKER}")
    if marker is None:
        return False
    fetch_tree(f"{shared_uri.rstrip('/')}/{entry}", out, lambda rel: rel != MARKER, where="zoo", field=SHARED_ZOO_ENV)
    if manifest(out) == json.loads(marker):
        return True
    for p in list(out.iterdir()):  # a partial or changed upload: build it here instead
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return False


def publish_shared(name: str | ZooSpec, shared_uri: str, log: Callable[[str], None] = print) -> str:
    """Builds zoo model `name` here if needed and copies its cache entry to the folder
    `shared_uri` unless a complete copy is there already (its marker is copied last);
    returns the entry's URI."""
    from ..cache import MARKER
    from ..storage import read_bytes, upload_dir

    path = build(name, log=log)
    uri = f"{shared_uri.rstrip('/')}/{path.name}"
    if read_bytes(f"{uri}/{MARKER}") != (path / MARKER).read_bytes():
        upload_dir(path, uri, last=MARKER)
        log(f"zoo: {path.name} shared at {uri}")
    return uri


# ----------------------------------------------------------------------------- building


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _make_model(spec: ZooSpec, tok):
    import torch

    torch.manual_seed(spec.seed)
    kw = spec.config_kwargs
    if spec.family == "opt":
        from transformers import OPTConfig, OPTForCausalLM

        cfg = OPTConfig(vocab_size=len(tok), max_position_embeddings=spec.seq_len, bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
        return OPTForCausalLM(cfg)
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(tok), n_positions=spec.seq_len, bos_token_id=tok.eos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    return GPT2LMHeadModel(cfg)


def unigram_perplexity(train_ids, test_ids, vocab_size: int) -> float:
    """Returns the perplexity of an add-one-smoothed unigram model (token frequencies of
    `train_ids`, vocabulary `vocab_size`) on `test_ids`: exp(mean NLL in nats/token)."""
    counts = Counter(train_ids.tolist() if hasattr(train_ids, "tolist") else train_ids)
    total = sum(counts.values()) + vocab_size
    test = test_ids.tolist() if hasattr(test_ids, "tolist") else list(test_ids)
    nll = -sum(math.log((counts.get(t, 0) + 1) / total) for t in test) / len(test)
    return math.exp(nll)


def _lr_lambda(spec: ZooSpec):
    warm = max(1, int(round(spec.warmup_frac * spec.steps)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, spec.steps - warm)
        return spec.min_lr_frac + (1 - spec.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _build_into(spec: ZooSpec, out: Path, log: Callable[[str], None]) -> None:
    import torch
    import transformers

    from ..jobs import JobContext
    from ..tasks.perplexity import WikiText2PPL, tokenize_split, wikitext2_perplexity
    from .tokenizer import train_bpe_tokenizer

    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    threads = _threads()
    torch.set_num_threads(threads)
    try:
        text = load_training_text(spec.train_sources)
        log(f"zoo {spec.name}: training text {text.dataset}/{text.split} ({len(text.text):,} chars) from {text.source}")
        tok = train_bpe_tokenizer(text.text, spec.vocab_size)
        ids = torch.tensor(tok(text.text, return_attention_mask=False, verbose=False)["input_ids"], dtype=torch.long)
        log(f"zoo {spec.name}: tokenizer vocab {len(tok)}, {len(ids):,} training tokens ({time.perf_counter() - t0:.1f}s)")

        model = _make_model(spec, tok)
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
        gen = torch.Generator().manual_seed(spec.seed)
        L = spec.seq_len

        def epoch_batches():
            # Each epoch: a random shift of the chunk grid, then the chunks in random order.
            while True:
                shift = int(torch.randint(0, L, (1,), generator=gen))
                n = (len(ids) - shift) // L
                chunks = ids[shift : shift + n * L].view(n, L)
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n - spec.batch_size + 1, spec.batch_size):
                    yield chunks[perm[i : i + spec.batch_size]]

        log(f"zoo {spec.name}: {spec.family} model, {n_params:,} parameters; {spec.steps} steps x {spec.batch_size} x {L} tokens, {threads} threads")
        model.train()
        batches = epoch_batches()
        t_train = time.perf_counter()
        every = max(1, spec.steps // 10)
        ema = None
        for step in range(spec.steps):
            x = next(batches)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            opt.step()
            sched.step()
            lv = loss.item()
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            if (step + 1) % every == 0 or step + 1 == spec.steps:
                log(f"zoo {spec.name}: step {step + 1}/{spec.steps} loss {lv:.3f} (avg {ema:.3f}) "
                    f"lr {sched.get_last_lr()[0]:.2e} elapsed {time.perf_counter() - t0:.0f}s")
        train_seconds = time.perf_counter() - t_train
        model.eval()

        log(f"zoo {spec.name}: evaluating WikiText-2 test perplexity")
        cache: dict = {}
        ctx = JobContext(device=torch.device("cpu"), tokenizer=tok,
                         cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))
        task = WikiText2PPL(split="test", batch_size=spec.eval_batch_size, max_tokens=spec.eval_max_tokens)
        res = wikitext2_perplexity(model, task, ctx)
        test_ids, _ = tokenize_split(tok, task.dataset, task.split)
        if spec.eval_max_tokens is not None:
            test_ids = test_ids[: spec.eval_max_tokens]
        # Same tokens as the perplexity scores: all but the first.
        uni = unigram_perplexity(ids, test_ids[1:], len(tok))
        log(f"zoo {spec.name}: test perplexity {res['wikitext2_ppl']:.2f} (unigram {uni:.2f}), "
            f"total {time.perf_counter() - t0:.0f}s")

        model.save_pretrained(out)
        tok.save_pretrained(out)
        for f in out.glob("*.bin"):
            raise RuntimeError(f"zoo {spec.name}: a pickle weight file was written ({f.name}); expected safetensors only")
        if not (out / "model.safetensors").is_file():
            raise RuntimeError(f"zoo {spec.name}: model.safetensors was not written")
        card = {
            "name": spec.name,
            "spec_hash": spec.spec_hash(),
            "build_version": BUILD_VERSION,
            "description": spec.description,
            "family": spec.family,
            "architecture": {"model_class": type(model).__name__, "vocab_size": len(tok), "positions": L,
                             **spec.config_kwargs},
            "parameter_count": n_params,
            "training": {
                "dataset": text.dataset, "split": text.split, "source": text.source, "join": text.join,
                "text_sha256": text.sha256, "tokens": len(ids), "tokens_seen": spec.steps * spec.batch_size * L,
                "steps": spec.steps, "batch_size": spec.batch_size, "seq_len": L, "seed": spec.seed,
                "optimizer": {"name": "AdamW", "lr": spec.lr, "betas": [0.9, 0.95], "weight_decay": spec.weight_decay,
                              "warmup_steps": max(1, int(round(spec.warmup_frac * spec.steps))),
                              "schedule": f"linear warmup, cosine to {spec.min_lr_frac} x lr", "grad_clip": spec.grad_clip},
                "final_loss_avg": ema, "threads": threads, "seconds": round(train_seconds, 2),
            },
            "seconds": round(time.perf_counter() - t0, 2),
            "wikitext2_test_ppl": res["wikitext2_ppl"],
            "wikitext2_test_nll": res["wikitext2_nll"],
            "wikitext2_scored_tokens": res["wikitext2_scored_tokens"],
            "eval_settings": {**res["eval_settings"], "batch_size": task.batch_size},
            "unigram_ppl": uni,
            "unigram_settings": {"counts_from": f"{text.dataset}/{text.split} training tokens",
                                 "smoothing": "add-one over the tokenizer vocabulary",
                                 "evaluated_on": "the same scored test tokens (all but the first)",
                                 "tokens": len(test_ids) - 1,
                                 "unit": "perplexity (exp of mean NLL in nats per token)"},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    finally:
        torch.set_num_threads(old_threads)


def tiny_variant(name: str = "gpt2-ref", *, steps: int = 5, eval_max_tokens: int = 2048, **overrides) -> ZooSpec:
    """Returns a copy of a registered spec that trains for `steps` steps and evaluates on the
    first `eval_max_tokens` test tokens (for tests of the build machinery; not registered)."""
    spec = get_spec(name)
    return dataclasses.replace(spec, name=f"{spec.name}-tiny", steps=steps, eval_max_tokens=eval_max_tokens,
                               description=f"test-sized variant of {spec.name}", **overrides)
