"""Loading models (causal LMs; GLUE encoders by their config's architecture) by zoo name, local directory or Hugging Face hub id.

``load_model`` resolves a name in this order:

1. a zoo name (``gpt2-ref`` or ``zoo:gpt2-ref``): the reference model the library trains
   itself (built first when missing and ``build_missing``);
2. an existing local directory: ``from_pretrained(path)`` (safetensors when present);
3. otherwise a hub id: ``from_pretrained(id)`` (needs the network or the HF cache).

Every loaded model carries a ``content_key``: a sha256 over its weight files (and
config.json), so that device workers can cache loaded models by content, not by name.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelNotFoundError

# Files whose bytes define a model for content_key.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.safetensors.index.json",
                   "*.bin.index.json")
KEY_FILES = ("config.json",)


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    source: "zoo", "local" or "hub". path: the directory the files came from (the zoo
    entry, the local folder or the hub snapshot), or None when unknown. content_key: hex
    sha256 over the weight files' names and bytes plus config.json (see `content_key`).
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    content_key: str
    path: str | None = None


def content_key(directory: str | Path) -> str:
    """Returns the hex sha256 over the weight files (safetensors, bin, pt, ... and their shard
    indexes) and config.json of a model directory, in sorted name order: name, size and bytes
    of each (symlinks, as in the HF cache, are followed). Raises ModelNotFoundError if the
    directory has no weight file."""
    d = Path(directory)
    files = sorted({p for pat in WEIGHT_PATTERNS for p in d.glob(pat) if p.is_file()}, key=lambda p: p.name)
    if not files:
        raise ModelNotFoundError(f"model directory {d} has no weight files ({', '.join(WEIGHT_PATTERNS)})")
    files += [d / f for f in KEY_FILES if (d / f).is_file()]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
    return h.hexdigest()


def auto_class(architectures) -> type:
    """Returns the transformers Auto class for a config's `architectures` list: sequence
    classifiers and masked LMs load as such (GLUE encoders), everything else as a causal LM."""
    import transformers

    arch = (architectures or [""])[0]
    for suffix, name in (("ForSequenceClassification", "AutoModelForSequenceClassification"),
                         ("ForMaskedLM", "AutoModelForMaskedLM")):
        if arch.endswith(suffix):
            return getattr(transformers, name)
    return transformers.AutoModelForCausalLM


def _from_dir(path: Path, *, device, trust_remote_code: bool):
    import json

    from transformers import AutoTokenizer

    kw: dict = {"trust_remote_code": trust_remote_code}
    if any(path.glob("*.safetensors")):
        kw["use_safetensors"] = True
    try:
        arch = json.loads((path / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        arch = None
    model = auto_class(arch).from_pretrained(str(path), **kw)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tok


def _zoo_name(name: str) -> str | None:
    from .zoo import zoo_names

    bare = name[4:] if name.startswith("zoo:") else name
    if bare in zoo_names():
        return bare
    if name.startswith("zoo:"):
        raise ModelNotFoundError(f"model {name!r}: {bare!r} is not a zoo name; zoo names: {', '.join(zoo_names())}")
    return None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _hub_snapshot_dir(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
        return Path(found).parent if isinstance(found, str) else None
    except Exception:
        return None


def load_model(name: str, *, device="cpu", trust_remote_code: bool = False, build_missing: bool = True,
               log: Callable[[str], None] = print) -> LoadedModel:
    """Returns a LoadedModel (model in eval mode on `device`, its tokenizer, and a content key)
    for a zoo name, a local model directory or a hub id, tried in that order. A zoo model not
    built yet is built (minutes on a CPU, progress to `log`) when `build_missing`, else
    ModelNotFoundError. A name that is none of the three raises ModelNotFoundError whose
    message is one line."""
    from . import zoo

    zname = _zoo_name(name)
    if zname is not None:
        path = zoo.zoo_path(zname)
        if path is None:
            if not build_missing:
                raise ModelNotFoundError(f"zoo model {zname!r} is not built in {zoo.entry_path(zname)}; run `sweeper zoo build {zname}`")
            path = zoo.build(zname, log=log)
        model, tok = _from_dir(path, device=device, trust_remote_code=False)
        return LoadedModel(model, tok, zname, "zoo", content_key(path), str(path))

    local = Path(name).expanduser()
    if local.is_dir():
        model, tok = _from_dir(local, device=device, trust_remote_code=trust_remote_code)
        return LoadedModel(model, tok, name, "local", content_key(local), str(local.resolve()))

    from transformers import AutoConfig, AutoTokenizer

    try:
        arch = getattr(AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code), "architectures", None)
        model = auto_class(arch).from_pretrained(name, trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {name!r} not found: not a zoo name ({', '.join(zoo.zoo_names())}), not a local directory, "
            f"and the hub failed: {_first_line(exc)}"
        ) from exc
    snap = _hub_snapshot_dir(name)
    if snap is not None:
        try:
            key = content_key(snap)
        except ModelNotFoundError:
            snap = None
    if snap is None:  # no cache layout to hash: fall back to id and resolved commit
        commit = getattr(model.config, "_commit_hash", None) or ""
        key = hashlib.sha256(f"hub:{name}@{commit}".encode()).hexdigest()
    return LoadedModel(model.to(device).eval(), tok, name, "hub", key, str(snap) if snap else None)


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off")


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        def cached(f):
            return isinstance(try_to_load_from_cache(repo_id, f), str)

        return cached("config.json") and any(
            cached(f) for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                "pytorch_model.bin.index.json"))
    except Exception:
        return False


def resolve_default_model(preferred: str = "gpt2", fallback: str = "gpt2-ref", *, timeout: float = 3.0) -> str:
    """Returns `preferred` when it can be loaded here: a zoo name, a local directory, a hub id
    whose config and weights are in the HF cache, or a hub id the hub answers for within
    `timeout` seconds (never asked when HF_HUB_OFFLINE is set); else returns `fallback`."""
    from .zoo import zoo_names

    if preferred in zoo_names() or preferred.startswith("zoo:") or Path(preferred).expanduser().is_dir():
        return preferred
    if _in_hf_cache(preferred):
        return preferred
    if _truthy("HF_HUB_OFFLINE"):
        return fallback
    try:
        from huggingface_hub import model_info

        model_info(preferred, timeout=timeout)
        return preferred
    except Exception:
        return fallback


def check_model_available(name: str) -> None:
    """Raises ConfigError (one line) unless `name` can be loaded here: a zoo name, a local
    model folder (with config.json), a hub id in the HF cache, or any hub id while the hub
    is reachable (then the hub itself is the judge, at load time)."""
    from ..data.wikitext import hub_reachable
    from ..errors import ConfigError

    try:
        if _zoo_name(name) is not None:
            return
    except ModelNotFoundError:  # an unknown "zoo:" name
        from .zoo import zoo_names

        raise ConfigError("experiment", "model", name, f"a zoo name: {', '.join(zoo_names())}") from None
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError("experiment", "model", name, "a model folder with config.json (as save_pretrained writes it)")
        return
    if _in_hf_cache(name):
        return
    if _truthy("HF_HUB_OFFLINE") or not hub_reachable():
        from .zoo import zoo_names

        raise ConfigError("experiment", "model", name, f"a zoo name ({', '.join(zoo_names())}), a local model folder, "
                          "or a hub id in the HF cache (the hub is not reachable from here)")
