"""GLUE: data readers, official metrics and the registered `glue` task."""
from ...registry import TASKS
from .data import TASK_INFO, TASK_NAMES, GlueSplit, dev_halves, load_split, task_info, task_splits
from .metrics import SEED_COLUMNS, TASK_KEYS, glue_avg, split_metrics
from .task import (GlueTask, classification_loss, classifier_logits, collate, glue_evaluate, predict,
                   training_batches, training_rows)

TASKS.register("glue", glue_evaluate)(GlueTask)

__all__ = ["GlueSplit", "GlueTask", "SEED_COLUMNS", "TASK_INFO", "TASK_KEYS", "TASK_NAMES", "classification_loss",
           "classifier_logits", "collate", "dev_halves", "glue_avg", "glue_evaluate", "load_split", "predict",
           "split_metrics", "task_info", "task_splits", "training_batches", "training_rows"]
