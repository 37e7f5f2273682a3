"""The LAMBADA test set (OpenAI's detokenized "lambada_openai" form) from a local data
folder, else from the Hugging Face hub (`EleutherAI/lambada_openai`).

Local layout, under a data folder D (``SWEEPER_DATA_DIR``, then ``./data``):
``D/lambada/lambada_test.jsonl``, one ``{"text": ...}`` object per line; the target is the
passage's last (space-separated) word.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataNotFoundError
from .wikitext import data_dirs, hub_reachable

LOCAL_FILE = Path("lambada") / "lambada_test.jsonl"
HUB_DATASET = "EleutherAI/lambada_openai"


@dataclass(frozen=True)
class Lambada:
    """The LAMBADA passages and where they came from."""

    texts: tuple[str, ...]
    source: str  # a file path or "hub:EleutherAI/lambada_openai"

    @property
    def sha256(self) -> str:
        """Returns the hex sha256 over the passages (UTF-8, "\\n"-joined); a cache key."""
        return hashlib.sha256("\n".join(self.texts).encode("utf-8")).hexdigest()


def split_target(text: str) -> tuple[str, str]:
    """Returns (context, target word) of a passage: the target is the last space-separated
    word, the context everything before the space in front of it (the lm-eval-harness split)."""
    context, _, word = text.rstrip().rpartition(" ")
    if not context or not word:
        raise ValueError(f"LAMBADA passage without a last word after a space: {text[-60:]!r}")
    return context, word


def _hub_offline() -> bool:
    import os

    return any(os.environ.get(v, "0") not in ("", "0", "false", "False") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_lambada() -> Lambada:
    """Returns the LAMBADA test passages from the first local data folder holding
    lambada/lambada_test.jsonl, else from the hub; raises DataNotFoundError (one line)."""
    dirs = data_dirs()
    for d in dirs:
        path = d / LOCAL_FILE
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                texts = tuple(json.loads(line)["text"] for line in f if line.strip())
            return Lambada(texts, str(path))
    note = "hub offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)"
    if not _hub_offline():
        note = "hub unreachable (no network)"
        if hub_reachable():
            try:
                import datasets

                ds = datasets.load_dataset(HUB_DATASET, "default", split="test")
                return Lambada(tuple(ds["text"]), f"hub:{HUB_DATASET}")
            except Exception as exc:  # report it in the one line
                note = f"hub failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    looked = ", ".join(str(d / LOCAL_FILE) for d in dirs)
    raise DataNotFoundError(f"LAMBADA test set not found: looked in {looked}; {note}. "
                            f"Put lambada_test.jsonl there or set SWEEPER_DATA_DIR to a folder that has it.")
