"""WikiText-2 from a local data folder (the hub's file layouts) or from the hub.

Local layouts understood, under a data folder D (``SWEEPER_DATA_DIR``, then ``./data``):

- ``D/wikitext-2-raw-v1/wiki.{train,valid,test}.raw`` and
  ``D/wikitext-2-v1/wiki.{train,valid,test}.tokens``: the original release files. A raw
  file may have had its empty rows dropped and CRLF line ends (the copy in
  ``../shared/data``); its lines are joined with "\\n" and the result says so.
- ``D/wikitext/wikitext-2-raw-v1/{split}-*.parquet`` (or without the ``wikitext/``
  level): the hub's parquet layout; rows are joined with "\\n\\n" as the Hugging Face
  perplexity recipe does.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import check_choice
from ..errors import DataNotFoundError

CONFIGS = ("wikitext-2-raw-v1", "wikitext-2-v1")
SPLITS = ("train", "validation", "test")
_FILE_SPLIT = {"train": "train", "validation": "valid", "test": "test"}
_FILE_EXT = {"wikitext-2-raw-v1": "raw", "wikitext-2-v1": "tokens"}


@dataclass(frozen=True)
class TextSplit:
    """The text of one dataset split and where it came from."""

    dataset: str  # e.g. "wikitext-2-raw-v1"
    split: str  # train | validation | test
    text: str
    source: str  # file path(s) or "hub:wikitext/<config>"
    join: str  # how rows were joined, reported with every metric

    @property
    def sha256(self) -> str:
        """Returns the hex sha256 of the text (UTF-8); used as a cache key."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def data_dirs() -> list[Path]:
    """Returns the local data folders searched, in order: $SWEEPER_DATA_DIR, then ./data."""
    dirs = []
    env = os.environ.get("SWEEPER_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser().resolve())
    dirs.append(Path("data").resolve())
    return dirs


def pin_data_dirs() -> None:
    """Makes the local data folders absolute in the environment (SWEEPER_DATA_DIR), so that
    processes started from here with another working directory (Ray workers) search the
    same folders."""
    env = os.environ.get("SWEEPER_DATA_DIR")
    if env:
        os.environ["SWEEPER_DATA_DIR"] = str(Path(env).expanduser().resolve())
    elif Path("data").is_dir():
        os.environ["SWEEPER_DATA_DIR"] = str(Path("data").resolve())


def _read_release_file(path: Path, config: str) -> tuple[str, str]:
    raw = path.read_bytes().decode("utf-8")
    text = raw.replace("\r\n", "\n")
    if config == "wikitext-2-raw-v1" and "\n\n" not in text:
        # Empty rows were dropped (the shared copy): rows are the lines, joined with "\n".
        lines = [ln for ln in text.split("\n") if ln.strip()]
        return "\n".join(lines), "non-empty lines joined with '\\n' (local file without empty rows)"
    return text, "file text as released"


def _find_local(config: str, split: str, d: Path) -> TextSplit | None:
    release = d / config / f"wiki.{_FILE_SPLIT[split]}.{_FILE_EXT[config]}"
    if release.is_file():
        text, join = _read_release_file(release, config)
        return TextSplit(config, split, text, str(release), join)
    for base in (d / "wikitext" / config, d / config):
        files = sorted(glob.glob(str(base / f"{split}-*.parquet")))
        if files:
            import pyarrow.parquet as pq

            rows = [r for f in files for r in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
            return TextSplit(config, split, "\n\n".join(rows), ",".join(files), "rows joined with '\\n\\n' (hub recipe)")
    return None


def _hub_offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0", "false", "False") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Returns whether the Hugging Face hub's host answers a TCP connect within timeout_s
    seconds (checked once per process). Without this, `datasets` spends ~25 s in retries
    per split on a machine with no network before it gives up."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _load_hub(config: str, split: str) -> TextSplit:
    import datasets

    ds = datasets.load_dataset("wikitext", config, split=split)
    return TextSplit(config, split, "\n\n".join(ds["text"]), f"hub:wikitext/{config}", "rows joined with '\\n\\n' (hub recipe)")


def load_wikitext(config: str = "wikitext-2-raw-v1", split: str = "test", *, allow_hub: bool = True) -> TextSplit:
    """Returns the text of a WikiText-2 split, from the first local data folder that has it,
    else from the hub; raises DataNotFoundError (one line: where it looked, how to fix)."""
    check_choice("data", "config", config, CONFIGS)
    check_choice("data", "split", split, SPLITS)
    dirs = data_dirs()
    for d in dirs:
        found = _find_local(config, split, d)
        if found is not None:
            return found
    hub_note = "hub disabled"
    if allow_hub and not _hub_offline() and not hub_reachable():
        hub_note = "hub unreachable (no network)"
    elif allow_hub and not _hub_offline():
        try:
            return _load_hub(config, split)
        except Exception as exc:  # network down, dataset missing: report it in the one line
            hub_note = f"hub failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    elif allow_hub:
        hub_note = "hub offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)"
    looked = ", ".join(str(d / config) for d in dirs)
    raise DataNotFoundError(
        f"WikiText-2 {config} split '{split}' not found: looked in {looked}; {hub_note}. "
        f"Put wiki.{_FILE_SPLIT[split]}.{_FILE_EXT[config]} there or set SWEEPER_DATA_DIR to a folder that has it."
    )



# Training / calibration text, in order of preference (dataset config, split); never test.
TRAINING_SOURCES: tuple[tuple[str, str], ...] = (
    ("wikitext-2-raw-v1", "train"),  # the hub's train split, when a data folder or the hub has it
    ("wikitext-2-raw-v1", "validation"),
    ("wikitext-2-v1", "validation"),  # the tokenized release (rare words as <unk>): ../shared/data
)


def load_training_text(sources: tuple[tuple[str, str], ...] = TRAINING_SOURCES) -> TextSplit:
    """Returns the first available of `sources` (WikiText-2 text for training and
    calibration, never the test split); raises DataNotFoundError naming every source tried."""
    errors = []
    for config, split in sources:
        if split == "test":
            raise ValueError("training text must never be the test split")
        try:
            return load_wikitext(config, split)
        except DataNotFoundError as exc:
            errors.append(f"{config}/{split}: {exc}")
    raise DataNotFoundError("no WikiText-2 training text found; tried " + " | ".join(errors))
