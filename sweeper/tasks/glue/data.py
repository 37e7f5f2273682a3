"""GLUE task data: the original release's TSV files, the hub's parquet layout in a local
folder, or the hub's `glue` dataset, tried in that order.

Local layouts under a data folder D (``SWEEPER_DATA_DIR``, then ``./data``):

- ``D/glue/TASK/{train,dev,dev_matched,dev_mismatched}.tsv`` (also ``D/glue_data/TASK``):
  the GLUE release as ``download_glue_data.py`` wrote it. Read with quoting off, as the
  original processors do (sentences contain ``"``); a UTF-8 BOM (MRPC) is dropped; CoLA has
  no header; rows with too few fields are skipped and counted.
- ``D/glue/HUBNAME/{train,validation,validation_matched,validation_mismatched}-*.parquet``:
  the hub dataset's parquet files.

Labels are normalised to the release's label strings (the hub's integer labels are mapped
through its own label names), then to indices in ``TaskInfo.labels``; STS-B is a float.
"""
from __future__ import annotations

import csv
import glob
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError, DataNotFoundError

SPLITS = ("train", "dev", "dev_matched", "dev_mismatched")
HUB_SPLIT = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
             "dev_mismatched": "validation_mismatched"}
HALF_SEED = 0  # the dev half a task without local train data is fine-tuned on is drawn with this


@dataclass(frozen=True)
class TaskInfo:
    """How one GLUE task is laid out and scored.

    folder: the release's folder name. hub: the hub config name. columns: (sentence, second
    sentence or None, label) by header name, or by index for a header-less file. labels: the
    label strings in index order (empty: regression). eval_splits: the splits scored."""

    name: str
    folder: str
    hub: str
    columns: tuple
    labels: tuple
    header: bool = True
    eval_splits: tuple = ("dev",)
    hub_columns: tuple = ()  # (sentence, second sentence or None) in the hub's rows

    @property
    def num_labels(self) -> int:
        """Returns the classifier's output count (1 for regression)."""
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        """Returns whether the label is a real number (STS-B)."""
        return not self.labels


TASK_INFO = {t.name: t for t in (
    TaskInfo("cola", "CoLA", "cola", (3, None, 1), ("0", "1"), header=False, hub_columns=("sentence", None)),
    TaskInfo("sst2", "SST-2", "sst2", ("sentence", None, "label"), ("0", "1"), hub_columns=("sentence", None)),
    TaskInfo("mrpc", "MRPC", "mrpc", ("#1 String", "#2 String", "Quality"), ("0", "1"),
             hub_columns=("sentence1", "sentence2")),
    TaskInfo("stsb", "STS-B", "stsb", ("sentence1", "sentence2", "score"), (), hub_columns=("sentence1", "sentence2")),
    TaskInfo("qqp", "QQP", "qqp", ("question1", "question2", "is_duplicate"), ("0", "1"),
             hub_columns=("question1", "question2")),
    TaskInfo("mnli", "MNLI", "mnli", ("sentence1", "sentence2", "gold_label"), ("contradiction", "entailment", "neutral"),
             eval_splits=("dev_matched", "dev_mismatched"), hub_columns=("premise", "hypothesis")),
    TaskInfo("qnli", "QNLI", "qnli", ("question", "sentence", "label"), ("entailment", "not_entailment"),
             hub_columns=("question", "sentence")),
    TaskInfo("rte", "RTE", "rte", ("sentence1", "sentence2", "label"), ("entailment", "not_entailment"),
             hub_columns=("sentence1", "sentence2")),
)}
TASK_NAMES = tuple(TASK_INFO)


@dataclass
class GlueSplit:
    """The rows of one split: text_a, text_b (None for single-sentence tasks), labels (int
    indices, or floats for STS-B), where they came from, and rows skipped as malformed."""

    task: str
    split: str
    text_a: list
    text_b: list | None
    labels: list
    source: str
    skipped: int = 0
    note: str = ""
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: list[int], split: str, note: str) -> "GlueSplit":
        """Returns the rows at `index` as a new split named `split`, with `note` saying how."""
        return GlueSplit(self.task, split, [self.text_a[i] for i in index],
                         None if self.text_b is None else [self.text_b[i] for i in index],
                         [self.labels[i] for i in index], self.source, self.skipped, note)


def task_info(task: str) -> TaskInfo:
    """Returns the TaskInfo of `task` (a name of TASK_NAMES); raises ConfigError (one line)."""
    if task not in TASK_INFO:
        raise ConfigError("task glue", "task", task, "one of " + ", ".join(TASK_NAMES))
    return TASK_INFO[task]


def glue_dirs() -> list[Path]:
    """Returns the local folders searched for GLUE data, in order."""
    from ...data.wikitext import data_dirs

    return [d / name for d in data_dirs() for name in ("glue", "glue_data")]


def _label(info: TaskInfo, raw: str, where: str):
    if info.is_regression:
        return float(raw)
    try:
        return info.labels.index(raw.strip())
    except ValueError:
        raise ValueError(f"{where}: label {raw!r} is not one of {info.labels}") from None


def read_release_tsv(info: TaskInfo, path: Path, split: str) -> GlueSplit:
    """Returns the rows of a release-layout TSV file (quoting off, BOM dropped)."""
    a, b, labels, skipped = [], [] if info.columns[1] is not None else None, [], 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if info.header:
            header = next(reader)
            try:
                cols = [None if c is None else header.index(c) for c in info.columns]
            except ValueError:
                raise DataNotFoundError(f"GLUE {info.name}: {path} has header {header}, expected columns "
                                        f"{[c for c in info.columns if c is not None]}") from None
            if info.name == "mnli" and "gold_label" in header:
                cols[2] = len(header) - 1  # the gold label is the last field (train has label1 before it)
        else:
            cols = list(info.columns)
        need = max(c for c in cols if c is not None)
        for row in reader:
            if len(row) <= need:
                skipped += 1  # the release has a few broken rows (QQP train); its processors skip them too
                continue
            a.append(row[cols[0]])
            if b is not None:
                b.append(row[cols[1]])
            labels.append(_label(info, row[cols[2]], str(path)))
    return GlueSplit(info.name, split, a, b, labels, str(path), skipped)


def _read_parquet(info: TaskInfo, files: list[str], split: str, source: str, names=None) -> GlueSplit:
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return _from_hub_columns(info, {c: df[c].tolist() for c in df.columns}, split, source, names)


def _from_hub_columns(info: TaskInfo, cols: dict, split: str, source: str, names=None) -> GlueSplit:
    ca, cb = info.hub_columns
    raw = cols["label"]
    if info.is_regression:
        labels = [float(x) for x in raw]
    else:
        # the hub's integer labels follow its own names (MNLI: entailment, neutral, contradiction)
        names = names or _hub_label_names(info)
        labels = [info.labels.index(names[int(x)]) for x in raw]
    return GlueSplit(info.name, split, list(cols[ca]), None if cb is None else list(cols[cb]), labels, source)


def _hub_label_names(info: TaskInfo) -> tuple:
    return {"mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"),
            "rte": ("entailment", "not_entailment")}.get(info.name, ("0", "1"))


def _load_hub(info: TaskInfo, split: str) -> GlueSplit:
    import datasets

    ds = datasets.load_dataset("glue", info.hub, split=HUB_SPLIT[split])
    names = ds.features["label"].names if hasattr(ds.features["label"], "names") else None
    return _from_hub_columns(info, {c: ds[c] for c in ds.column_names}, split, f"hub:glue/{info.hub}", names)


def find_local(info: TaskInfo, split: str) -> tuple[str, list[str]] | None:
    """Returns ("tsv"|"parquet", files) for the first local copy of the split, or None."""
    for d in glue_dirs():
        tsv = d / info.folder / f"{split}.tsv"
        if tsv.is_file():
            return "tsv", [str(tsv)]
        files = sorted(glob.glob(str(d / info.hub / f"{HUB_SPLIT[split]}-*.parquet")))
        if files:
            return "parquet", files
    return None


def _hub_allowed() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return False
    from ...data.wikitext import hub_reachable

    return hub_reachable()


def missing_message(info: TaskInfo, split: str) -> str:
    """Returns the one line saying where a split was looked for and what to put there."""
    where = ", ".join(str(d / info.folder) for d in glue_dirs()[:2])
    return (f"GLUE {info.name} split {split!r} not found: looked for {info.folder}/{split}.tsv (GLUE release layout) "
            f"and {info.hub}/{HUB_SPLIT[split]}-*.parquet under {where}, and the hub's glue/{info.hub} is not reachable; "
            f"put the release's {split}.tsv in {glue_dirs()[0] / info.folder}")


def has_split(task: str, split: str) -> bool:
    """Returns whether the split exists locally (the hub is not asked)."""
    return find_local(task_info(task), split) is not None


def load_split(task: str, split: str) -> GlueSplit:
    """Returns the rows of `split` of `task`, from the first of: local TSV, local parquet,
    the hub. Raises DataNotFoundError (one line) when none has it."""
    info = task_info(task)
    allowed = ("train",) + info.eval_splits
    if split not in allowed:
        raise ConfigError(f"task glue {task}", "split", split, "one of " + ", ".join(allowed))
    found = find_local(info, split)
    if found is not None:
        kind, files = found
        if kind == "tsv":
            return read_release_tsv(info, Path(files[0]), split)
        return _read_parquet(info, files, split, ",".join(files))
    if _hub_allowed():
        try:
            return _load_hub(info, split)
        except Exception as exc:  # noqa: BLE001 - turned into the one line below
            raise DataNotFoundError(missing_message(info, split) + f" (hub: {type(exc).__name__})") from None
    raise DataNotFoundError(missing_message(info, split))


def dev_halves(dev: GlueSplit, seed: int = HALF_SEED) -> tuple[GlueSplit, GlueSplit]:
    """Returns (train half, eval half) of a dev split: a fixed seeded shuffle, the first
    half (rounded down) to fine-tune on, the rest to evaluate."""
    order = list(range(len(dev)))
    random.Random(seed).shuffle(order)
    cut = len(order) // 2
    note = f"no local train split: fine-tuned on a seeded half of dev (seed {seed}, {cut} rows), evaluated on the other half ({len(order) - cut} rows)"
    return (dev.subset(sorted(order[:cut]), "dev_half_train", note),
            dev.subset(sorted(order[cut:]), "dev_half_eval", note))


def task_splits(task: str) -> tuple[GlueSplit, list[GlueSplit]]:
    """Returns (train split, eval splits) of `task`: the release's train and dev splits, or,
    where train is missing everywhere but dev is there, the two halves of dev (dev_halves;
    each split's `note` says so)."""
    info = task_info(task)
    evals = []
    for s in info.eval_splits:
        evals.append(load_split(task, s))
    try:
        train = load_split(task, "train")
    except DataNotFoundError:
        if len(evals) != 1:
            raise
        train, half = dev_halves(evals[0])
        evals = [half]
    return train, evals


def check_task_data(task: str) -> None:
    """Raises DataNotFoundError (one line) now if the task's eval splits cannot be found
    anywhere (a missing train split is allowed: dev is halved)."""
    info = task_info(task)
    for s in info.eval_splits:
        if find_local(info, s) is None and not _hub_allowed():
            raise DataNotFoundError(missing_message(info, s))


def runnable_tasks(task: str) -> tuple[list[str], dict[str, str]]:
    """Returns (tasks to run, {task: one-line reason} for the tasks left out) for a task
    name, a comma list of names, or "all" (every task whose dev split is found; the others are left out with the
    reason). A named task that is unknown raises ConfigError; one without data, or "all"
    with no task at all, raises DataNotFoundError (one line)."""
    asked = TASK_NAMES if task == "all" else tuple(task.split(","))
    for t in asked:
        if t not in TASK_NAMES:
            raise ConfigError("roberta_glue_qat", "--task", task, "one of " + ", ".join(TASK_NAMES) +
                              ", a comma list of them, or all")
    names, missing = [], {}
    for t in asked:
        try:
            check_task_data(t)
            names.append(t)
        except DataNotFoundError as exc:
            if task != "all":
                raise
            missing[t] = str(exc)
    if not names:
        raise DataNotFoundError("no GLUE task has data here: " + "; ".join(missing.values()))
    return names, missing
