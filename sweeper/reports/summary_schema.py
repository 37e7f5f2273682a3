"""The summary's vocabulary: which keys of a Tune result are metrics, and the one line an
error is shown as. Shared by the engine (which builds the summary) and the reports."""
from __future__ import annotations


def is_metric_key(key: str) -> bool:
    """Returns whether a Tune result key is a trial metric (not Tune's own bookkeeping)."""
    skip = ("config", "date", "hostname", "node_ip", "pid", "time_this_iter_s", "time_since_restore",
            "timestamp", "iterations_since_restore", "checkpoint_dir_name", "done", "trial_id",
            "time_total_s", "experiment_tag", "should_checkpoint")
    return not key.startswith(skip) and not key.startswith("eval_settings/")


def one_line(err) -> str:
    """Returns the line that names an error's reason (the innermost "Type: message" line of
    its text, or its last line), at most 500 characters."""
    text = str(getattr(err, "cause", None) or err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "Type: message" line names the reason
        if ("Error" in ln or "Exception" in ln) and ":" in ln:
            return ln[:500]
    return (lines[-1] if lines else repr(err))[:500]
