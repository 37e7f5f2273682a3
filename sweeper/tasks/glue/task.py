"""The GLUE task: fine-tuned sequence classifiers scored on the tasks' dev splits.

`GlueTask(task="rte")` evaluates a classifier (transformers ...ForSequenceClassification, or
a wrapper whose forward(input_ids, attention_mask) returns logits first) on the task's dev
split(s) in padded batches and returns the task's metrics in percent (metrics.TASK_KEYS),
plus `glue_score`, the task's seed-table column, so that one sweep over several tasks has one
objective key. It also hands recipes the task's training rows (`training_batches`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ...config import check_choice, check_int
from ...errors import ConfigError
from .data import TASK_NAMES, check_task_data, task_info, task_splits
from .metrics import SEED_COLUMNS, split_metrics

WHERE = "task glue"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task on its dev split(s).

    task: cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte.
    max_length: tokens per example (pairs truncated longest-first).
    batch_size: examples per evaluation batch (padded to the batch's longest).
    max_eval_rows: score only the first N rows of each eval split (None: all); reported.
    max_train_rows: train on a seeded sample of N training rows (None: all); reported.
    seed: the training-row sample's seed.
    """

    task: str = "rte"
    max_length: int = 128
    batch_size: int = 32
    max_eval_rows: int | None = None
    max_train_rows: int | None = None
    seed: int = 0

    metric = "glue_score"
    mode = "max"

    def __post_init__(self):
        check_choice(WHERE, "task", self.task, TASK_NAMES)
        check_int(WHERE, "max_length", self.max_length, 8, 4096)
        check_int(WHERE, "batch_size", self.batch_size, 1, 4096)
        if self.max_eval_rows is not None:
            check_int(WHERE, "max_eval_rows", self.max_eval_rows, 1, 1 << 40)
        if self.max_train_rows is not None:
            check_int(WHERE, "max_train_rows", self.max_train_rows, 1, 1 << 40)
        check_int(WHERE, "seed", self.seed, 0, 2**31 - 1)

    def training_data(self, ctx, batch_size: int, seed: int):
        """Returns training_batches(self, ctx.tokenizer, batch_size, seed, ctx): what a
        training recipe (aimet_qat) fine-tunes a classifier on."""
        return training_batches(self, ctx.tokenizer, batch_size, seed, ctx)

    def check_data(self) -> None:
        """Raises DataNotFoundError (one line) now, before Ray starts, if the task's dev
        split(s) can be found nowhere."""
        check_task_data(self.task)


def encode(tokenizer, split, max_length: int) -> list[list[int]]:
    """Returns the token ids of every row of a GlueSplit (pairs as the tokenizer joins them,
    truncated to `max_length` tokens)."""
    if split.text_b is None:
        enc = tokenizer(split.text_a, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(split.text_a, split.text_b, truncation="longest_first", max_length=max_length)
    return enc["input_ids"]


def collate(rows: list[list[int]], pad_id: int):
    """Returns (input_ids, attention_mask) LongTensors of `rows` right-padded with `pad_id`
    to the longest row; the mask is 1 on real tokens, 0 on padding."""
    import torch

    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def classifier_logits(model, input_ids, attention_mask):
    """Returns the (batch, num_labels) logits of a classifier or of a wrapper whose output
    is a tuple with the logits first."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out[0]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ConfigError(WHERE, "tokenizer", getattr(tokenizer, "name_or_path", "?"), "a tokenizer with a pad token")
    return pad


def encoded_task(tokenizer, config: GlueTask, ctx=None, part: str = "eval"):
    """Returns the task's tokenized rows, cached on the worker (ctx.cached) by tokenizer,
    task, length and part: part "train" gives (ids, labels, note, source, skipped rows) of
    the training split; "eval" gives [(split name, ids, labels, note, source, skipped)] of
    the scored splits. Only the part asked for is tokenized."""
    def build():
        train, evals = task_splits(config.task)
        if part == "train":
            return (encode(tokenizer, train, config.max_length), list(train.labels), train.note, train.source,
                    train.skipped)
        return [(s.split, encode(tokenizer, s, config.max_length), list(s.labels), s.note, s.source, s.skipped)
                for s in evals]

    key = ("glue-tokens", getattr(tokenizer, "name_or_path", id(tokenizer)), len(tokenizer), config.task,
           config.max_length, part)
    return ctx.cached(key, build) if ctx is not None else build()


def training_rows(tokenizer, config: GlueTask, ctx=None) -> tuple[list, list, dict]:
    """Returns (token id rows, labels, settings) of the task's training data: the release's
    train split (or the dev half, see data.dev_halves), sampled to config.max_train_rows
    rows with config.seed; settings says which and how many."""
    ids, labels, note, source, _ = encoded_task(tokenizer, config, ctx, "train")
    idx = list(range(len(ids)))
    if config.max_train_rows is not None and config.max_train_rows < len(idx):
        idx = sorted(random.Random(config.seed).sample(idx, config.max_train_rows))
    settings = {"train_source": source, "train_rows": len(idx), "train_rows_available": len(ids),
                "train_sampled": len(idx) < len(ids)}
    if note:
        settings["train_note"] = note
    return [ids[i] for i in idx], [labels[i] for i in idx], settings


def training_batches(config: GlueTask, tokenizer, batch_size: int, seed: int, ctx=None):
    """Returns (a function epoch() -> list of (input_ids, attention_mask, labels) batches in
    a seeded shuffled order (a new order each call), the number of batches per epoch,
    settings). Labels are LongTensor class indices, or a FloatTensor for STS-B."""
    import torch

    ids, labels, settings = training_rows(tokenizer, config, ctx)
    pad = _pad_id(tokenizer)
    regression = task_info(config.task).is_regression
    gen = torch.Generator().manual_seed(seed)

    def epoch():
        order = torch.randperm(len(ids), generator=gen).tolist()
        out = []
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            x, m = collate([ids[j] for j in chunk], pad)
            y = torch.tensor([labels[j] for j in chunk], dtype=torch.float if regression else torch.long)
            out.append((x, m, y))
        return out

    return epoch, -(-len(ids) // batch_size), settings


def classification_loss(logits, labels):
    """Returns the training loss: cross-entropy over classes, or MSE on the single output
    for a float (regression) label, as transformers' sequence classifiers compute it."""
    import torch.nn.functional as F

    if labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1).float(), labels)
    return F.cross_entropy(logits.float(), labels)


def predict(model, ids: list[list[int]], pad_id: int, batch_size: int, device, regression: bool,
            check_cancelled=lambda: None) -> list:
    """Returns the predictions (class indices, or floats for regression) of `model` on the
    token id rows, `batch_size` rows per padded batch."""
    import torch

    preds = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            check_cancelled()
            x, m = collate(ids[i : i + batch_size], pad_id)
            logits = classifier_logits(model, x.to(device), m.to(device))
            preds += logits[:, 0].float().tolist() if regression else logits.argmax(-1).tolist()
    return preds


def glue_evaluate(model, config: GlueTask, ctx) -> dict:
    """Returns the task's metrics in percent (metrics.TASK_KEYS[task]), `glue_score` (the
    task's seed column, percent), `glue_eval_rows` (count) and eval_settings for `model` on
    the task's eval split(s)."""
    import torch

    device = ctx.device if isinstance(ctx.device, torch.device) else torch.device(ctx.device)
    info = task_info(config.task)
    evals = encoded_task(ctx.tokenizer, config, ctx, "eval")
    was_training = getattr(model, "training", False)
    model.eval()
    metrics, rows, settings = {}, 0, {"task": config.task, "max_length": config.max_length,
                                      "batch_size": config.batch_size, "max_eval_rows": config.max_eval_rows,
                                      "unit": "percent", "splits": {}}
    try:
        for split, ids, labels, note, source, skipped in evals:
            if config.max_eval_rows is not None:
                ids, labels = ids[: config.max_eval_rows], labels[: config.max_eval_rows]
            preds = predict(model, ids, _pad_id(ctx.tokenizer), config.batch_size, device, info.is_regression,
                            ctx.check_cancelled)
            metrics.update(split_metrics(config.task, labels, preds, split))
            rows += len(ids)
            settings["splits"][split] = {"rows": len(ids), "source": source, "skipped_rows": skipped,
                                         **({"note": note} if note else {})}
            if note:
                settings["note"] = note
    finally:
        model.train(was_training)
    return {**metrics, "glue_score": metrics[SEED_COLUMNS[config.task]], "glue_eval_rows": rows,
            "eval_settings": settings}
