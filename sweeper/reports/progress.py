"""The sweep's progress view: one status line (trials done / running / failed, the best
value so far, elapsed and estimated remaining time) that is rewritten in place on a
terminal and printed as a new line in a log (only when a trial ends, or every `every_s`
seconds), plus one line per failed trial."""
from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from .summary_schema import one_line


def format_duration(seconds: float) -> str:
    """Returns `seconds` as '42s', '3m05s' or '1h02m'."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def status_line(total: int, done: int, running: int, failed: int, best: float | None, metric: str,
                elapsed_s: float) -> str:
    """Returns the progress line. The remaining time is elapsed / ended x trials left
    (None until a trial has ended): a rough figure, labelled as an estimate."""
    ended = done + failed
    left = ""
    if 0 < ended < total:
        left = f", ~{format_duration(elapsed_s / ended * (total - ended))} left"
    best_txt = f" | best {metric} {best:.4g}" if best is not None and math.isfinite(best) else ""
    return (f"[sweeper] trials {ended}/{total} ended ({done} done, {failed} failed), {running} running"
            f"{best_txt} | {format_duration(elapsed_s)} elapsed{left}")


def _error_text(trial) -> str:
    try:
        err = trial.get_error()
        if err is not None:
            return str(err)
        return open(trial.error_file).read() if trial.error_file else "no error text"
    except Exception as exc:  # noqa: BLE001 - a progress line must never end the sweep
        return f"(its error could not be read: {type(exc).__name__})"


class ProgressView(Callback):
    """A Ray Tune callback printing the status line for `total` trials of objective
    (`metric`, `mode`) to stdout: in place on a terminal, else a new line when a count
    changes or `every_s` seconds passed. A failed trial gets its own line. It holds no
    stream (Tune pickles its callbacks with the experiment state): stdout is looked up
    at each write."""

    @property
    def stream(self):
        return sys.stdout

    @property
    def tty(self) -> bool:
        return bool(getattr(sys.stdout, "isatty", lambda: False)())

    def __init__(self, total: int, metric: str, mode: str, every_s: float = 60.0):
        self.total, self.metric, self.mode = total, metric, mode
        self.every_s = every_s
        self.start = time.monotonic()
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.best: float | None = None
        self.latest: dict[str, float] = {}
        self.last_counts: tuple | None = None
        self.last_print = 0.0

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        counts = (len(self.done), len(self.running), len(self.failed))
        # a log gets a new line when a trial ends (not when one starts), or every every_s
        changed = counts != self.last_counts if self.tty else (
            self.last_counts is None or (counts[0], counts[2]) != (self.last_counts[0], self.last_counts[2]))
        if not force and not changed and now - self.last_print < (1.0 if self.tty else self.every_s):
            return
        line = status_line(self.total, *counts, self.best, self.metric, now - self.start)
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.last_counts, self.last_print = counts, now

    def _sync(self, trials) -> None:
        # trials that ended before this driver started (a resumed sweep) count too
        for t in trials:
            if t.status == "TERMINATED" and t.trial_id not in self.running:
                self.done.add(t.trial_id)
            elif t.status == "ERROR" and t.trial_id not in self.running:
                self.failed.add(t.trial_id)
        self.total = max(self.total, len(trials))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._sync(trials)
        self.running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # a trial's value is its latest report's (as the summary ranks it), not its best epoch's
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            self.latest[trial.trial_id] = v
            values = list(self.latest.values())
            self.best = min(values) if self.mode == "min" else max(values)
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed.discard(trial.trial_id)  # an errored trial that a retry finished
        self.done.add(trial.trial_id)
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        if self.tty:
            self.stream.write("\n")
        reason = one_line(_error_text(trial))
        self.stream.write(f"[sweeper] trial {trial.trial_id} failed: {reason}\n")
        self._show(force=True)

    def on_experiment_end(self, trials, **info):
        self._show(force=self.tty)  # a log already has the line of the last trial's end
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class ThrottledLines:
    """A `log` callable for long work (a reference model being trained) in front of a
    waiting user: every line is appended to `path` (when given); on the console a terminal
    sees each line rewritten in place, a log sees the first line and then at most one line
    every `every_s` seconds (every line when 0). `finish` prints the closing line."""

    def __init__(self, prefix: str = "", path=None, every_s: float = 60.0):
        self.prefix, self.path, self.every_s = prefix, path, every_s
        self.last_print: float | None = None
        self.pending_tty_line = False

    @property
    def tty(self) -> bool:
        return self.every_s > 0 and bool(getattr(sys.stdout, "isatty", lambda: False)())

    def __call__(self, line: str) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        now = time.monotonic()
        if self.tty:
            sys.stdout.write("\r\x1b[2K" + self.prefix + line)
            self.pending_tty_line = True
        elif self.last_print is None or now - self.last_print >= self.every_s:
            sys.stdout.write(self.prefix + line + "\n")
            self.last_print = now
        sys.stdout.flush()

    def finish(self, line: str) -> None:
        """Prints `line` as the work's last line (always, on a line of its own)."""
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        sys.stdout.write(("\r\x1b[2K" if self.pending_tty_line else "") + self.prefix + line + "\n")
        sys.stdout.flush()
        self.pending_tty_line = False
