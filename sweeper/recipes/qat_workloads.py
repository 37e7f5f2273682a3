"""What the aimet QAT loop trains on, per kind of model: a causal LM fine-tunes on blocks of
the job's training text, a sequence classifier on its task's padded training rows. Each
gives a `Workload`: the QuantSim-ready wrapped model, its example and calibration inputs,
and one epoch of training batches at a time."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

WHERE = "recipe aimet_qat"


@dataclass
class Workload:
    """What the QAT loop needs of one kind of model.

    fp_model: the wrapped float model QuantSim is built on. dummy: its example inputs (a
    tuple). calib: input tuples for compute_encodings. epoch(): one epoch of training
    batches, each (inputs tuple, labels). steps: batches per epoch. input_names: the ONNX
    export's inputs. check_tokens: ids for the deployed graph's check (None: the deployed
    graph is not measured). info: settings for the trial's info."""

    fp_model: object
    dummy: tuple
    calib: list
    epoch: Callable[[], list]
    steps: int
    input_names: list
    check_tokens: object
    info: dict


class BlockEpochs:
    """Epochs of `batch_size` token blocks drawn without replacement from a seeded shuffle:
    one pass over the blocks per epoch when `steps` is None, else `steps` batches carrying
    the shuffle over from epoch to epoch (reshuffled when it runs out)."""

    def __init__(self, blocks, batch_size: int, steps: int | None, seed: int):
        import torch

        self.blocks, self.batch_size, self.fixed_steps = blocks, batch_size, steps is not None
        self.steps = steps or math.ceil(len(blocks) / batch_size)
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def __call__(self) -> list:
        """Returns one epoch: a list of ((batch,), batch) pairs (inputs tuple, LM labels)."""
        import torch

        out = []
        for step in range(1, self.steps + 1):
            if len(self.order) < self.batch_size and (self.fixed_steps or step == 1):
                self.order = torch.cat([self.order, torch.randperm(len(self.blocks), generator=self.gen)])
            idx, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
            batch = self.blocks[idx]
            out.append(((batch,), batch))
        return out


def causal_lm_workload(lm, config, ctx) -> Workload:
    """Returns the Workload of causal LM `lm` (modified in place: pass a copy) for an
    AimetQATConfig: blocks of config.seq_len tokens (the model's positions when None) of
    ctx.train_text; raises ConfigError for a seq_len longer than the model's."""
    from ..tasks.perplexity import model_max_positions
    from .calibration import token_blocks
    from .qat_models import CausalLMTupleOutput

    max_pos = model_max_positions(lm)
    seq_len = config.seq_len or max_pos
    if seq_len > max_pos:
        raise ConfigError(WHERE, "seq_len", seq_len, f"at most the model's {max_pos} positions")
    blocks = token_blocks(ctx, seq_len, WHERE)
    bs = config.batch_size
    calib = [(blocks[i : i + bs],) for i in range(0, len(blocks), bs)][: config.calibration_batches]
    epochs = BlockEpochs(blocks, bs, config.steps_per_epoch, config.seed)
    return Workload(CausalLMTupleOutput(lm), (calib[0][0][:1],), calib, epochs, epochs.steps, ["input_ids"],
                    calib[0][0][:2], {"seq_len": seq_len, "train_blocks": len(blocks)})


def classifier_workload(clf, config, ctx) -> Workload:
    """Returns the Workload of sequence classifier `clf` (modified in place: pass a copy)
    for an AimetQATConfig: the job's task's training rows (`task.training_data`), padded,
    with config.attention_mask_value on padded positions; raises ConfigError when the task
    supplies no training rows."""
    from .qat_models import prepare_classifier

    task = getattr(ctx, "task", None)
    if not hasattr(task, "training_data"):
        raise ConfigError(WHERE, "task", type(task).__name__,
                          "a task that supplies training rows (e.g. glue) for a sequence classifier")
    rows_epoch, steps, settings = task.training_data(ctx, config.batch_size, config.seed)
    if config.steps_per_epoch is not None:
        rows_epoch, steps = fixed_length_epochs(rows_epoch, config.steps_per_epoch), config.steps_per_epoch

    def epoch():
        return [((x, m), y) for x, m, y in rows_epoch()]

    calib = [(x, m) for x, m, _ in rows_epoch()][: config.calibration_batches]
    x0, m0 = calib[0]
    mask_value = config.attention_mask_value
    return Workload(prepare_classifier(clf, mask_value), (x0[:1], m0[:1]), calib, epoch, steps,
                    ["input_ids", "attention_mask"], None,
                    {**settings, "attention_mask_value": "dtype min" if mask_value is None else mask_value,
                     "deployed_graph": "not measured for sequence classifiers (the deployed check reads a causal LM)"})


def fixed_length_epochs(full_epoch: Callable[[], list], steps: int) -> Callable[[], list]:
    """Returns an epoch function giving exactly `steps` batches, taken from as many calls of
    `full_epoch` as needed."""
    def epoch():
        out = []
        while len(out) < steps:
            out += full_epoch()
        return out[:steps]

    return epoch
