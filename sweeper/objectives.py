"""What a user asks of a sweep beyond one number: several objectives with their directions,
constraints on metrics (absolute, or relative to the FP32 baseline), and from them each
trial's feasibility, the feasible trials' Pareto front and "the pick": the best feasible
trial on the first objective (Intel Neural Compressor's accuracy-criterion answer).

A constraint is written `METRIC OP BOUND`: OP one of <=, <, >=, >; BOUND a number, `fp32`
(the baseline's value of METRIC), `K * fp32`, `fp32 * K`, `fp32 + K` or `fp32 - K`. E.g.
"wikitext2_ppl <= 1.01 * fp32" (at most 1% above FP32), "glue_score >= fp32 - 1" (an
accuracy drop of at most 1 point), "latency_ms < 50"."""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from .errors import ConfigError
from .reports.pareto import pareto_front

MODES = ("min", "max")
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w/.-]*)\s*(<=|<|>=|>)\s*(.+?)\s*$")
_BOUNDS = [  # (pattern, kind): kind "abs" K | "ratio" K*fp32 | "delta" fp32+K
    (re.compile(rf"^({_NUMBER})$"), "abs"),
    (re.compile("^fp32$"), "fp32"),
    (re.compile(rf"^({_NUMBER})\s*\*\s*fp32$"), "ratio"),
    (re.compile(rf"^fp32\s*\*\s*({_NUMBER})$"), "ratio"),
    (re.compile(rf"^fp32\s*([-+])\s*({_NUMBER})$"), "delta"),
]


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and its direction ("min" or "max")."""

    metric: str
    mode: str


@dataclass(frozen=True)
class Constraint:
    """metric OP bound; `kind` says how the bound is made: "abs" (value), "ratio" (value x
    the FP32 baseline's metric) or "delta" (the baseline's metric + value)."""

    metric: str
    op: str
    kind: str
    value: float
    text: str

    def bound(self, baseline: dict) -> float | None:
        """Returns the bound in the metric's unit (None when it is relative and the
        baseline has no finite value of the metric)."""
        if self.kind == "abs":
            return self.value
        base = baseline.get(self.metric)
        if not _finite(base):
            return None
        return self.value * base if self.kind == "ratio" else base + self.value

    def holds(self, metrics: dict, baseline: dict) -> bool:
        """Returns whether `metrics` satisfy the constraint (False when the metric is
        missing or not finite, or its relative bound cannot be made)."""
        v, b = metrics.get(self.metric), self.bound(baseline)
        return _finite(v) and b is not None and OPS[self.op](v, b)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_objective(item, where: str = "experiment") -> Objective:
    """Returns the Objective of ("metric", "min"|"max"), "metric:min|max" or an Objective;
    raises ConfigError (one line) for anything else."""
    if isinstance(item, Objective):
        item = (item.metric, item.mode)
    if isinstance(item, str) and ":" in item:
        item = tuple(item.rsplit(":", 1))
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        raise ConfigError(where, "objectives", item, "(metric, 'min' or 'max') pairs or 'metric:min' strings")
    metric, mode = item[0].strip(), item[1].strip()
    if mode not in MODES:
        raise ConfigError(where, "objectives", f"{metric}:{mode}", "a direction 'min' or 'max'")
    if not metric:
        raise ConfigError(where, "objectives", item, "a metric name")
    return Objective(metric, mode)


def parse_constraint(text, where: str = "experiment") -> Constraint:
    """Returns the Constraint written in `text` (see the module docstring); raises
    ConfigError (one line) when it is not of that form."""
    allowed = "'METRIC OP BOUND', OP in <=, <, >=, >; BOUND a number, fp32, K * fp32 or fp32 +/- K"
    if isinstance(text, Constraint):
        return text
    m = _CONSTRAINT.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(where, "constraints", text, allowed)
    metric, op, rhs = m.groups()
    for pattern, kind in _BOUNDS:
        b = pattern.match(rhs)
        if not b:
            continue
        if kind == "abs":
            return Constraint(metric, op, "abs", float(b.group(1)), text.strip())
        if kind == "fp32":
            return Constraint(metric, op, "ratio", 1.0, text.strip())
        if kind == "ratio":
            return Constraint(metric, op, "ratio", float(b.group(1)), text.strip())
        sign = -1.0 if b.group(1) == "-" else 1.0
        return Constraint(metric, op, "delta", sign * float(b.group(2)), text.strip())
    raise ConfigError(where, "constraints", text, allowed)


def check_against(objectives: list[Objective], constraints: list[Constraint], known: set[str] | None,
                  where: str = "experiment") -> None:
    """Raises ConfigError (one line) for an objective or constraint on a metric not in
    `known` (what the task and recipe report; None: not known, nothing checked), for a
    metric given two directions, and for a constraint whose bound can never hold
    (a relative bound on a metric below K * fp32 with K <= 0)."""
    seen: dict[str, str] = {}
    for o in objectives:
        if known is not None and o.metric not in known:
            raise ConfigError(where, "objectives", o.metric, "a metric the sweep reports: " + ", ".join(sorted(known)))
        if seen.get(o.metric, o.mode) != o.mode:
            raise ConfigError(where, "objectives", o.metric, "one direction per metric (given both min and max)")
        seen[o.metric] = o.mode
    for c in constraints:
        if known is not None and c.metric not in known:
            raise ConfigError(where, "constraints", c.text, "a constraint on a metric the sweep reports: "
                              + ", ".join(sorted(known)))
        if c.kind == "ratio" and c.value <= 0 and c.op in ("<", "<="):
            raise ConfigError(where, "constraints", c.text, "a bound that can hold (K * fp32 with K > 0)")


def feasibility(trials: list[dict], baseline: dict, constraints: list[Constraint]) -> list[bool]:
    """Returns, per trial (summary trials: {"status", "metrics"}), whether it finished and
    its metrics satisfy every constraint (True for every finished trial when there are none)."""
    return [t.get("status") == "TERMINATED" and all(c.holds(t.get("metrics", {}), baseline) for c in constraints)
            for t in trials]


def feasible_front(trials: list[dict], objectives: list[Objective], feasible: list[bool]) -> list[str]:
    """Returns the trial ids on the Pareto front of the feasible trials over `objectives`
    (those with every objective finite), in the trials' order."""
    cands = [t for t, ok in zip(trials, feasible) if ok and all(_finite(t["metrics"].get(o.metric)) for o in objectives)]
    points = [tuple(t["metrics"][o.metric] for o in objectives) for t in cands]
    on = set(pareto_front(points, tuple(o.mode for o in objectives))) if points else set()
    return [t["trial_id"] for i, t in enumerate(cands) if i in on]


def pick(trials: list[dict], objectives: list[Objective], feasible: list[bool]) -> str | None:
    """Returns the id of the best feasible trial on the first objective (ties: the next
    objectives in order), or None when no trial is feasible."""
    cands = [t for t, ok in zip(trials, feasible) if ok and all(_finite(t["metrics"].get(o.metric)) for o in objectives)]
    if not cands:
        return None

    def key(t):
        return tuple(t["metrics"][o.metric] * (1 if o.mode == "min" else -1) for o in objectives)

    return min(cands, key=key)["trial_id"]
