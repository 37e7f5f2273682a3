"""Reference language models the library trains itself, on a CPU, from real WikiText-2 text.

Each zoo model is described by a frozen ``ZooSpec`` (architecture, tokenizer vocabulary,
training settings). ``build(name)`` trains it deterministically (fixed seed, fixed data
order) on WikiText-2 text that is never the test split, evaluates its WikiText-2 **test**
perplexity and a unigram baseline on the same tokenizer, and stores everything in the
on-disk cache (``cache_root()/zoo/<name>-<spec hash>``): ``model.safetensors``,
``config.json``, the tokenizer files and ``card.json``.

A build trains on the CPU or on a CUDA GPU (``device``); the device is not part of the
cache key, the card records it. Bit-for-bit reproducibility holds for the same spec,
training text, library versions, device (GPU model) and CPU thread count; CUDA builds run
with deterministic algorithms. ``import_entry(folder)`` copies an entry built elsewhere (say
on a GPU machine) into this machine's cache under its spec hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cache import MARKER, build_once, cache_root, is_complete
from ..config import check_choice
from ..data.wikitext import TRAINING_SOURCES as TRAIN_SOURCES
from ..data.wikitext import load_training_text
from ..errors import ConfigError, DeviceUnavailable

# Bump when the training or evaluation code changes what a build produces.
BUILD_VERSION = 1

FAMILIES = ("gpt2", "opt", "gptj", "roberta", "roberta-cls")
ENCODER_FAMILIES = ("roberta", "roberta-cls")
DEVICES = ("auto", "cpu", "cuda")

# Spec fields added after BUILD_VERSION 1, with the value that reproduces the version-1
# training. At that value a field is left out of the spec hash, so the specs that existed
# before keep their hash (and users' cached builds stay valid).
_FIELDS_HASHED_ONLY_WHEN_SET = {"holdout_tokens": 0, "select_every": 0, "base": "", "task": "", "train_rows": 0}


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
    holdout_tokens: the last N tokens of the training text are held out of training (0: none);
    every `select_every` steps (and after the last) the mean loss on them is measured and the
    weights with the lowest held-out loss are kept, so a model that starts to overfit the
    small training text is stopped at its best point (the test split is never looked at).
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
    holdout_tokens: int = 0
    select_every: int = 0
    # roberta-cls only: the zoo model it is fine-tuned from, the GLUE task, and how many
    # training rows (a seeded sample; 0: all). For these `steps` counts epochs.
    base: str = ""
    task: str = ""
    train_rows: int = 0

    def __post_init__(self):
        where = f"zoo spec {self.name}"
        if self.family not in FAMILIES:
            raise ConfigError(where, "family", self.family, "one of " + ", ".join(FAMILIES))
        if any(split == "test" for _, split in self.train_sources):
            raise ConfigError(where, "train_sources", self.train_sources, "splits other than 'test'")
        if (self.holdout_tokens > 0) != (self.select_every > 0) or self.holdout_tokens < 0 or self.select_every < 0:
            raise ConfigError(where, "holdout_tokens/select_every", (self.holdout_tokens, self.select_every),
                              "both 0, or both positive")
        if (self.family == "roberta-cls") != bool(self.base and self.task):
            raise ConfigError(where, "base/task", (self.base, self.task), "both set for roberta-cls, neither otherwise")
        if 0 < self.holdout_tokens < self.seq_len:
            raise ConfigError(where, "holdout_tokens", self.holdout_tokens, f"0 or at least seq_len ({self.seq_len})")

    @property
    def config_kwargs(self) -> dict:
        """Returns the architecture keyword arguments as a dict."""
        return dict(self.config)

    def spec_hash(self) -> str:
        """Returns a 12-hex-digit hash of the spec (and the build code version): the cache key."""
        d = dataclasses.asdict(self)
        d.pop("description")
        for field, version_1_value in _FIELDS_HASHED_ONLY_WHEN_SET.items():
            if d[field] == version_1_value:
                d.pop(field)
        if self.base:  # a fine-tune changes with what it starts from
            d["base_hash"] = get_spec(self.base).spec_hash()
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


register(ZooSpec(
    name="gptj-ref",
    family="gptj",
    config=tuple(sorted(dict(n_embd=128, n_layer=2, n_head=4, n_inner=512, rotary_dim=16, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0).items())),
    vocab_size=4096,
    seq_len=128,
    batch_size=16,
    steps=400,  # same budget as gpt2-ref: ~2 min on 2 cores
    lr=3e-3,
    eval_batch_size=64,
    description="GPT-J architecture (GPTJForCausalLM: rotary on 16 of each head's 32 dims, parallel attention "
                "and MLP), 2 layers, 128 wide, 4 heads, gelu_new FFN 512, 128 positions, own 4096-token byte-level BPE",
))


# The -m models: most parameters in the (quantized) matmuls rather than in the FP32 tied
# embedding, so weight quantization visibly moves their perplexity. ~300k training tokens
# (the validation text) are few for 12M parameters: dropout, and the weights of the step
# with the lowest loss on held-out training text are kept. Minutes on one GPU; on a CPU
# see the step time measured in the README.
register(ZooSpec(
    name="gpt2-ref-m",
    family="gpt2",
    config=tuple(sorted(dict(n_embd=384, n_layer=6, n_head=6, n_inner=1536, resid_pdrop=0.1, embd_pdrop=0.1,
                             attn_pdrop=0.0).items())),
    vocab_size=4096,
    seq_len=256,
    batch_size=16,
    steps=800,  # ~11 passes over the validation text; held-out selection guards against overfitting
    lr=1e-3,
    eval_batch_size=32,
    holdout_tokens=16384,
    select_every=50,
    description="GPT-2 architecture, 6 layers, 384 wide, 6 heads, FFN 1536, 256 positions, own 4096-token "
                "byte-level BPE",
))


register(ZooSpec(
    name="opt-ref-m",
    family="opt",
    config=tuple(sorted(dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, ffn_dim=1536,
                             word_embed_proj_dim=384, dropout=0.1, attention_dropout=0.0,
                             activation_dropout=0.0).items())),
    vocab_size=4096,
    seq_len=256,
    batch_size=16,
    steps=800,
    lr=1e-3,
    eval_batch_size=32,
    holdout_tokens=16384,
    select_every=50,
    description="OPT architecture (OPTForCausalLM), 6 layers, 384 wide, 6 heads, ReLU FFN 1536, 256 positions, "
                "own 4096-token byte-level BPE",
))


# The reference encoder (RoBERTa workload): pre-trained briefly with masked LM, then one
# fine-tuned classifier per local GLUE task. Small enough that the base takes ~1-2 min and
# each fine-tune well under a minute on 2 CPU cores.
ROBERTA_REF = register(ZooSpec(
    name="roberta-ref",
    family="roberta",
    config=tuple(sorted(dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).items())),
    vocab_size=2048,
    seq_len=64,  # GLUE sentences are short; 64 tokens keeps CPU fine-tuning and QAT quick
    batch_size=16,
    steps=300,
    lr=1e-3,
    warmup_frac=0.06,
    weight_decay=0.01,
    description="RoBERTa architecture (RobertaForMaskedLM), 2 layers, 128 wide, 4 heads, FFN 256, 64 positions, "
                "own 2048-token byte-level BPE, masked LM on the WikiText-2 validation text",
))

# training rows per classifier fine-tune (a seeded sample where the split has more; the card
# says how many): a minute or two per task on 2 shared CPU cores; the full splits (SST-2 has
# 67k rows) would take far longer. A reference for quantization, not a GLUE contender.
CLASSIFIER_TRAIN_ROWS = 800
GLUE_LOCAL_TASKS = ("cola", "sst2", "mrpc", "stsb", "qnli", "rte")


def classifier_name(task: str, base: str = "roberta-ref") -> str:
    """Returns the zoo name of the GLUE `task` classifier fine-tuned from `base`."""
    return f"{base}-{task}"


# The -m encoder: a size that learns some of the local tasks beyond their majority class
# (SST-2 ~79%, MRPC, QNLI and STS-B above chance in a GPU probe), so W8A8's and the mask
# value's effects show. ~2 min of masked LM on one GPU; hours on 2 CPU cores.
ROBERTA_REF_M = register(ZooSpec(
    name="roberta-ref-m",
    family="roberta",
    config=tuple(sorted(dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).items())),
    vocab_size=8192,
    seq_len=128,
    batch_size=64,
    steps=3000,
    lr=5e-4,
    warmup_frac=0.06,
    weight_decay=0.01,
    description="RoBERTa architecture (RobertaForMaskedLM), 4 layers, 256 wide, 4 heads, FFN 1024, 128 positions, "
                "own 8192-token byte-level BPE, masked LM on the WikiText-2 validation text",
))
CLASSIFIER_TRAIN_ROWS_M = 20000
ENCODER_BASES = ("roberta-ref", "roberta-ref-m")


def _register_classifiers(base: ZooSpec, *, train_rows: int, epochs: int, lr: float) -> None:
    for task in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"):
        register(ZooSpec(
            name=classifier_name(task, base.name), family="roberta-cls", config=base.config,
            vocab_size=base.vocab_size, seq_len=base.seq_len, batch_size=32, steps=epochs, lr=lr, warmup_frac=0.1,
            weight_decay=0.01, base=base.name, task=task, train_rows=train_rows,
            description=f"{base.name} fine-tuned on GLUE {task} (RobertaForSequenceClassification"
                        f"{', regression head' if task == 'stsb' else ''}), at most {train_rows} training rows, "
                        f"{epochs} epochs",
        ))


_register_classifiers(ROBERTA_REF, train_rows=CLASSIFIER_TRAIN_ROWS, epochs=2, lr=1e-3)
_register_classifiers(ROBERTA_REF_M, train_rows=CLASSIFIER_TRAIN_ROWS_M, epochs=3, lr=1e-4)


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


def resolve_device(device: str):
    """Returns the torch.device a build trains on for `device`: 'cpu', 'cuda' (the current
    CUDA device) or 'auto' (cuda when torch sees one, else cpu). Raises ConfigError for any
    other value and DeviceUnavailable for 'cuda' where torch sees no CUDA device."""
    check_choice("zoo build", "device", device, DEVICES)
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"zoo build: device='cuda' but torch {torch.__version__} sees no CUDA device; "
                                "use --device cpu or auto")
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")


def build(name: str | ZooSpec, *, force: bool = False, device: str = "cpu",
          log: Callable[[str], None] = print) -> Path:
    """Returns the cache directory of the trained zoo model `name` (a registered name or a
    ZooSpec), training it first on `device` ('cpu', 'cuda' or 'auto'; see resolve_device)
    when it is not built yet (or when `force`). Progress lines go to `log`. Another process
    building the same entry at the same time waits for it. The device is not part of the
    cache key: an entry built on any device is reused."""
    spec = get_spec(name) if isinstance(name, str) else name
    torch_device = resolve_device(device)
    path = entry_path(spec)
    if not force and is_complete(path):
        return path
    shared = os.environ.get(SHARED_ZOO_ENV)

    def make(out: Path) -> None:
        if shared and not force and fetch_shared(path.name, shared, out):
            log(f"zoo: copied {spec.name} from {shared}")
            return
        log(f"zoo: building {spec.name} on {torch_device} into {path}")
        _build_into(spec, out, log, torch_device)

    return build_once(path, make, force=force)


IMPORT_REQUIRED_FILES = ("card.json", "config.json", "model.safetensors", "tokenizer.json")


def import_entry(folder: str | Path, *, force: bool = False) -> tuple[Path, bool]:
    """Returns (cache directory, copied) after copying a zoo entry built elsewhere (the folder
    `build` wrote, e.g. on a GPU machine) into this cache under its spec hash. `copied` is
    False when a complete entry was already there (and not `force`). The folder must hold
    IMPORT_REQUIRED_FILES and no pickle weights; its card must name a registered model and
    that model's current spec hash; its config.json must match the spec's architecture; and
    when it holds a COMPLETE manifest, every file must match it. Raises ConfigError (one line)."""
    where = "zoo import"
    src = Path(folder).expanduser().resolve()
    if not src.is_dir():
        raise ConfigError(where, "PATH", str(folder),
                          "a folder holding a built zoo entry (card.json, model.safetensors, ...)")
    missing = [f for f in IMPORT_REQUIRED_FILES if not (src / f).is_file()]
    if missing:
        raise ConfigError(where, "PATH", str(src),
                          f"a folder with {', '.join(IMPORT_REQUIRED_FILES)} (missing: {', '.join(missing)})")
    pickles = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickles:
        raise ConfigError(where, "PATH", str(src), f"safetensors weights only (found {', '.join(pickles)})")
    try:
        card = json.loads((src / "card.json").read_text())
        name, card_hash = card["name"], card["spec_hash"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(where, "card.json", str(src / "card.json"),
                          f"a zoo card with name and spec_hash ({type(exc).__name__})") from None
    if name not in _ZOO:
        raise ConfigError(where, "card name", name, "one of " + ", ".join(zoo_names()))
    spec = _ZOO[name]
    if card_hash != spec.spec_hash():
        raise ConfigError(where, "card spec_hash", card_hash,
                          f"{spec.spec_hash()}, the current spec of {name} "
                          "(the entry was built from another spec or build version)")
    if (src / MARKER).exists() and not is_complete(src):
        raise ConfigError(where, "PATH", str(src), f"an entry whose files match its {MARKER} manifest "
                          "(a file differs: changed or cut short in the copy?)")
    _check_config_matches(spec, src, where)
    _check_safetensors(src / "model.safetensors", where)
    dest = entry_path(spec)
    if not force and is_complete(dest):
        return dest, False

    def copy_into(out: Path) -> None:
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_file() and rel.as_posix() != MARKER:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / rel)

    return build_once(dest, copy_into, force=force), True


def _check_config_matches(spec: ZooSpec, src: Path, where: str) -> None:
    try:
        cfg = json.loads((src / "config.json").read_text())
    except ValueError:
        raise ConfigError(where, "config.json", str(src / "config.json"), "a JSON model config") from None
    if spec.family in ENCODER_FAMILIES:
        expected = {"model_type": "roberta", **spec.config_kwargs, "max_position_embeddings": spec.seq_len + 2}
    else:
        expected = {"model_type": spec.family, **spec.config_kwargs,
                    ("max_position_embeddings" if spec.family == "opt" else "n_positions"): spec.seq_len}
    for key, value in expected.items():
        if cfg.get(key) != value:
            raise ConfigError(where, f"config.json {key}", cfg.get(key), f"{value!r}, as the spec of {spec.name} says")


def _check_safetensors(path: Path, where: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if not list(f.keys()):
                raise ValueError("no tensors")
    except Exception as exc:  # a truncated or foreign file: report it in the one line
        raise ConfigError(where, "model.safetensors", str(path),
                          f"a readable safetensors file ({type(exc).__name__})") from None


# ----------------------------------------------------------------------------- parameters


def parameter_counts(model) -> dict:
    """Returns the parameter counts of a transformers causal LM, in parameters (a tied LM
    head counts once, as embedding): {'total', 'embedding' (token and position tables),
    'matmul' (weights of the Linear/Conv1D layers other than a tied LM head: what weight
    quantization recipes quantize), 'matmul_fraction' (matmul / total, 0..1)}."""
    import torch
    from transformers.pytorch_utils import Conv1D

    embeddings = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    embedding_ids = {id(w) for w in embeddings}
    matmul = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, (torch.nn.Linear, Conv1D)) and id(m.weight) not in embedding_ids)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "embedding": sum(w.numel() for w in embeddings), "matmul": matmul,
            "matmul_fraction": matmul / total}


def spec_parameter_counts(spec: ZooSpec | str) -> dict:
    """Returns parameter_counts() of the model a spec describes, from its config alone (built
    on the meta device, no training, no weights), assuming the tokenizer reaches the spec's
    vocab_size."""
    import torch

    spec = get_spec(spec) if isinstance(spec, str) else spec
    cls, cfg = _model_class_and_config(spec, spec.vocab_size, eos_id=0, pad_id=0)
    with torch.device("meta"):
        return parameter_counts(cls(cfg))


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


def _model_class_and_config(spec: ZooSpec, vocab_size: int, *, eos_id: int, pad_id: int):
    kw = spec.config_kwargs
    if spec.family in ENCODER_FAMILIES:
        from transformers import RobertaForMaskedLM, RobertaForSequenceClassification

        from ..tasks.glue import task_info
        from .encoder import roberta_config

        if spec.family == "roberta":
            return RobertaForMaskedLM, roberta_config(spec, vocab_size)
        return RobertaForSequenceClassification, roberta_config(spec, vocab_size, num_labels=task_info(spec.task).num_labels)
    if spec.family == "opt":
        from transformers import OPTConfig, OPTForCausalLM

        return OPTForCausalLM, OPTConfig(vocab_size=vocab_size, max_position_embeddings=spec.seq_len, bos_token_id=eos_id,
                                         eos_token_id=eos_id, pad_token_id=pad_id, **kw)
    if spec.family == "gptj":
        from transformers import GPTJConfig, GPTJForCausalLM

        return GPTJForCausalLM, GPTJConfig(vocab_size=vocab_size, n_positions=spec.seq_len, bos_token_id=eos_id,
                                           eos_token_id=eos_id, pad_token_id=pad_id, **kw)
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel, GPT2Config(vocab_size=vocab_size, n_positions=spec.seq_len, bos_token_id=eos_id,
                                       eos_token_id=eos_id, pad_token_id=pad_id, **kw)


def _make_model(spec: ZooSpec, tok):
    import torch

    torch.manual_seed(spec.seed)
    cls, cfg = _model_class_and_config(spec, len(tok), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    return cls(cfg)


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


def device_description(device) -> dict:
    """Returns {'type': 'cpu'|'cuda', 'name': the GPU's or CPU's model name} for a torch.device."""
    import platform

    import torch

    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "index": device.index}
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"type": "cpu", "name": name}


class _DeterministicCuda:
    """Within: deterministic CUDA kernels (cuBLAS workspace config, deterministic algorithms,
    no cuDNN autotuning); the previous settings come back on exit. On a CPU build nothing is
    changed, so CPU builds run exactly the kernels they always did."""

    def __init__(self, device):
        self.on = device.type == "cuda"

    def __enter__(self):
        import torch

        if self.on:
            # Read by cuBLAS when this process first creates its handle; set before any CUDA matmul.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            self.saved = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled(),
                          torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return self

    def __exit__(self, *exc):
        import torch

        if self.on:
            enabled, warn_only, cudnn_det, cudnn_bench = self.saved
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench
        return False


def _holdout_loss(model, chunks, batch_size: int, device) -> float:
    """Returns the mean next-token NLL (nats/token) of `model` on the rows of `chunks`."""
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            x = chunks[i : i + batch_size].to(device)
            scored = x.shape[0] * (x.shape[1] - 1)
            total += model(input_ids=x, labels=x).loss.double().item() * scored
            n += scored
    model.train()
    return total / n


def _progress_line(spec: ZooSpec, step: int, loss: float, ema: float, lr: float, train_s: float, elapsed_s: float) -> str:
    tokens_per_s = step * spec.batch_size * spec.seq_len / max(train_s, 1e-9)
    eta = (spec.steps - step) * train_s / step
    return (f"zoo {spec.name}: step {step}/{spec.steps} loss {loss:.3f} (avg {ema:.3f}) lr {lr:.2e} "
            f"{tokens_per_s:,.0f} tokens/s elapsed {elapsed_s:.0f}s eta {eta:.0f}s")


# A progress line every this many steps at least, and whenever this many seconds passed
# since the last one (a long CPU build is never silent for long).
_PROGRESS_LINES = 20
_PROGRESS_SECONDS = 30.0


def _build_into(spec: ZooSpec, out: Path, log: Callable[[str], None], device) -> None:
    import torch

    if spec.family in ENCODER_FAMILIES:
        from .encoder import build_classifier_into, build_mlm_into

        old_threads = torch.get_num_threads()
        torch.set_num_threads(_threads())
        try:
            with _DeterministicCuda(device):
                (build_mlm_into if spec.family == "roberta" else build_classifier_into)(spec, out, log, device)
        finally:
            torch.set_num_threads(old_threads)
        return
    import transformers

    from ..jobs import JobContext
    from ..tasks.perplexity import WikiText2PPL, tokenize_split, wikitext2_perplexity
    from .tokenizer import train_bpe_tokenizer

    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    threads = _threads()
    torch.set_num_threads(threads)
    try:
        with _DeterministicCuda(device):
            text = load_training_text(spec.train_sources)
            log(f"zoo {spec.name}: training text {text.dataset}/{text.split} ({len(text.text):,} chars) from {text.source}")
            tok = train_bpe_tokenizer(text.text, spec.vocab_size)
            ids = torch.tensor(tok(text.text, return_attention_mask=False, verbose=False)["input_ids"], dtype=torch.long)
            log(f"zoo {spec.name}: tokenizer vocab {len(tok)}, {len(ids):,} training tokens ({time.perf_counter() - t0:.1f}s)")
            L = spec.seq_len
            if spec.holdout_tokens and len(ids) - spec.holdout_tokens < L * spec.batch_size:
                raise ConfigError(f"zoo spec {spec.name}", "holdout_tokens", spec.holdout_tokens,
                                  f"fewer, leaving at least one batch of the {len(ids)} training tokens")
            train_ids = ids[: len(ids) - spec.holdout_tokens]
            n_hold = spec.holdout_tokens // L
            holdout_chunks = ids[len(train_ids) : len(train_ids) + n_hold * L].view(n_hold, L)

            model = _make_model(spec, tok).to(device)
            counts = parameter_counts(model)
            decay = [p for p in model.parameters() if p.dim() >= 2]
            no_decay = [p for p in model.parameters() if p.dim() < 2]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
            gen = torch.Generator().manual_seed(spec.seed)

            def epoch_batches():
                # Each epoch: a random shift of the chunk grid, then the chunks in random order
                # (drawn on the CPU: the same order on every device).
                while True:
                    shift = int(torch.randint(0, L, (1,), generator=gen))
                    n = (len(train_ids) - shift) // L
                    chunks = train_ids[shift : shift + n * L].view(n, L)
                    perm = torch.randperm(n, generator=gen)
                    for i in range(0, n - spec.batch_size + 1, spec.batch_size):
                        yield chunks[perm[i : i + spec.batch_size]]

            dev = device_description(device)
            log(f"zoo {spec.name}: {spec.family} model, {counts['total']:,} parameters ({counts['matmul']:,} in matmuls, "
                f"{counts['matmul_fraction']:.0%}); {spec.steps} steps x {spec.batch_size} x {L} tokens on "
                f"{dev['type']} ({dev['name']}), {threads} CPU threads")
            model.train()
            batches = epoch_batches()
            every = max(1, spec.steps // _PROGRESS_LINES)
            ema, train_s, last_line = None, 0.0, time.perf_counter()
            selection, best_state, best_loss, best_step = [], None, math.inf, spec.steps
            for step in range(spec.steps):
                t_step = time.perf_counter()
                x = next(batches).to(device)
                loss = model(input_ids=x, labels=x).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                opt.step()
                sched.step()
                lv = loss.item()  # waits for the GPU: the step time below is the real one
                train_s += time.perf_counter() - t_step
                ema = lv if ema is None else 0.9 * ema + 0.1 * lv
                done = step + 1
                if spec.select_every and (done % spec.select_every == 0 or done == spec.steps):
                    held = _holdout_loss(model, holdout_chunks, spec.eval_batch_size, device)
                    selection.append({"step": done, "holdout_nll": held})
                    if held < best_loss:
                        best_loss, best_step = held, done
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if done % every == 0 or done == spec.steps or time.perf_counter() - last_line >= _PROGRESS_SECONDS:
                    fresh = selection and selection[-1]["step"] == done
                    held_note = f" held-out {selection[-1]['holdout_nll']:.3f}" if fresh else ""
                    log(_progress_line(spec, done, lv, ema, sched.get_last_lr()[0], train_s,
                                       time.perf_counter() - t0) + held_note)
                    last_line = time.perf_counter()
            if best_state is not None:
                model.load_state_dict(best_state)
                log(f"zoo {spec.name}: keeping the weights of step {best_step} (held-out loss {best_loss:.4f})")
            model.eval()

            log(f"zoo {spec.name}: evaluating WikiText-2 test perplexity")
            cache: dict = {}
            ctx = JobContext(device=device, tokenizer=tok,
                             cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()))
            task = WikiText2PPL(split="test", batch_size=spec.eval_batch_size, max_tokens=spec.eval_max_tokens)
            res = wikitext2_perplexity(model, task, ctx)
        test_ids, _ = tokenize_split(tok, task.dataset, task.split)
        if spec.eval_max_tokens is not None:
            test_ids = test_ids[: spec.eval_max_tokens]
        # Same tokens as the perplexity scores: all but the first.
        uni = unigram_perplexity(train_ids, test_ids[1:], len(tok))
        log(f"zoo {spec.name}: test perplexity {res['wikitext2_ppl']:.2f} (unigram {uni:.2f}), "
            f"total {time.perf_counter() - t0:.0f}s")

        model.to("cpu").save_pretrained(out)
        tok.save_pretrained(out)
        for f in out.glob("*.bin"):
            raise RuntimeError(f"zoo {spec.name}: a pickle weight file was written ({f.name}); expected safetensors only")
        if not (out / "model.safetensors").is_file():
            raise RuntimeError(f"zoo {spec.name}: model.safetensors was not written")
        tokens_seen = spec.steps * spec.batch_size * L
        card = {
            "name": spec.name,
            "spec_hash": spec.spec_hash(),
            "build_version": BUILD_VERSION,
            "description": spec.description,
            "family": spec.family,
            "architecture": {"model_class": type(model).__name__, "vocab_size": len(tok), "positions": L,
                             **spec.config_kwargs},
            "parameter_count": counts["total"],
            "parameter_counts": {**counts, "unit": "parameters; matmul = Linear/Conv1D weights except the tied LM head"},
            "device": dev,
            "training": {
                "dataset": text.dataset, "split": text.split, "source": text.source, "join": text.join,
                "text_sha256": text.sha256, "tokens": len(train_ids), "tokens_seen": tokens_seen,
                "steps": spec.steps, "batch_size": spec.batch_size, "seq_len": L, "seed": spec.seed,
                "optimizer": {"name": "AdamW", "lr": spec.lr, "betas": [0.9, 0.95], "weight_decay": spec.weight_decay,
                              "warmup_steps": max(1, int(round(spec.warmup_frac * spec.steps))),
                              "schedule": f"linear warmup, cosine to {spec.min_lr_frac} x lr", "grad_clip": spec.grad_clip},
                "final_loss_avg": ema, "threads": threads, "device": dev["type"], "precision": "float32",
                "deterministic_algorithms": device.type == "cuda",
                "seconds": round(train_s, 2), "tokens_per_second": round(tokens_seen / max(train_s, 1e-9), 1),
                "selection": None if not spec.holdout_tokens else {
                    "holdout_tokens": n_hold * L, "holdout_from": "the last tokens of the training text, never trained on",
                    "every_steps": spec.select_every, "selected_step": best_step, "holdout_nll": selection,
                    "unit": "mean NLL in nats per token"},
            },
            "seconds": round(time.perf_counter() - t0, 2),
            "wikitext2_test_ppl": res["wikitext2_ppl"],
            "wikitext2_test_nll": res["wikitext2_nll"],
            "wikitext2_scored_tokens": res["wikitext2_scored_tokens"],
            "eval_settings": {**res["eval_settings"], "batch_size": task.batch_size, "device": dev["type"]},
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
