"""GLUE's official metrics, in percent, under fixed keys (scikit-learn and scipy compute them).

SEED_COLUMNS are the eight numbers of the seed's table (one per task); `glue_avg` is their
mean over the tasks that ran.
"""
from __future__ import annotations

# task -> the key of its seed-table column (its headline metric)
SEED_COLUMNS = {"cola": "cola_mcc", "sst2": "sst2_acc", "mrpc": "mrpc_f1", "stsb": "stsb_pearson",
                "qqp": "qqp_acc", "mnli": "mnli_acc", "qnli": "qnli_acc", "rte": "rte_acc"}
# task -> every key it reports
TASK_KEYS = {"cola": ("cola_mcc",), "sst2": ("sst2_acc",), "mrpc": ("mrpc_f1", "mrpc_acc"),
             "stsb": ("stsb_pearson", "stsb_spearman"), "qqp": ("qqp_acc", "qqp_f1"),
             "mnli": ("mnli_acc", "mnli_mm_acc"), "qnli": ("qnli_acc",), "rte": ("rte_acc",)}


def accuracy(labels, preds) -> float:
    """Returns the accuracy in percent."""
    from sklearn.metrics import accuracy_score

    return 100.0 * float(accuracy_score(labels, preds))


def f1(labels, preds) -> float:
    """Returns the F1 of the positive class (label 1) in percent."""
    from sklearn.metrics import f1_score

    return 100.0 * float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))


def mcc(labels, preds) -> float:
    """Returns Matthews' correlation coefficient x 100 (0 when predictions are constant)."""
    from sklearn.metrics import matthews_corrcoef

    return 100.0 * float(matthews_corrcoef(labels, preds))


def pearson_spearman(labels, preds) -> tuple[float, float]:
    """Returns (Pearson r, Spearman rho) x 100; (0, 0) for a constant prediction (no
    correlation can be read from it; a quantized regression head can collapse to one value),
    as scikit-learn's MCC gives 0 for one predicted class."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    y, p = np.asarray(labels, dtype=float), np.asarray(preds, dtype=float)
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0, 0.0
    return 100.0 * float(pearsonr(y, p)[0]), 100.0 * float(spearmanr(y, p)[0])


def split_metrics(task: str, labels, preds, split: str = "dev") -> dict:
    """Returns the task's metrics (percent) for one evaluated split: labels and predictions
    are class indices (floats for STS-B). MNLI's dev_mismatched gives mnli_mm_acc."""
    if task == "cola":
        return {"cola_mcc": mcc(labels, preds)}
    if task == "stsb":
        import numpy as np

        p, s = pearson_spearman(labels, preds)
        # the spread of the predictions: 0 says a 0 correlation is a collapsed head
        return {"stsb_pearson": p, "stsb_spearman": s, "stsb_pred_std": float(np.std(np.asarray(preds, dtype=float)))}
    if task in ("mrpc", "qqp"):
        return {f"{task}_f1": f1(labels, preds), f"{task}_acc": accuracy(labels, preds)}
    if task == "mnli":
        return {"mnli_mm_acc" if split == "dev_mismatched" else "mnli_acc": accuracy(labels, preds)}
    return {f"{task}_acc": accuracy(labels, preds)}


def glue_avg(results: dict) -> tuple[float | None, int]:
    """Returns (mean of the seed columns over the tasks in `results`, how many it averaged):
    `results` maps task -> its metrics dict; a task whose column is missing or not finite is
    left out. (None, 0) when none counts."""
    import math

    vals = [m.get(SEED_COLUMNS[t]) for t, m in results.items() if t in SEED_COLUMNS and m]
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return (sum(vals) / len(vals) if vals else None), len(vals)
