"""The noise between seeds: per-configuration aggregates of repeated trials, and ties.

A *configuration* is a trial's config without its seed (`SEED_KEY`); the trials of one
configuration are its repeats. Each metric of a configuration is an `Estimate`: the mean
over its finished repeats, the sample standard deviation (ddof=1) and the count n.

"Within the noise" (`within_noise`), the one test every tie mark here uses: two estimates
a and b are tied when

    |mean_a - mean_b| <= TIE_Z * sqrt(std_a**2 / n_a + std_b**2 / n_b)

with TIE_Z = 2, i.e. their difference is within two standard errors of the difference
(Welch's standard error; about a 95% two-sided test for normal noise, looser for small n).
A configuration run once (n = 1) has no noise estimate, so it can be called neither tied
nor separated: the test answers None ("unknown"), and the tables show "?". Two estimates
with std 0 (a seed that changes nothing) are tied only when their means are equal.

Pure functions on plain dicts and numbers: the sweep's summary, the leaderboard and the
Pareto front all use them.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from .config import is_finite_number

SEED_KEY = "seed"  # the config key that repeats of one configuration vary
TIE_Z = 2.0  # standard errors of the difference within which two means are tied


@dataclass(frozen=True)
class Estimate:
    """A metric of one configuration over its repeats: `mean`, sample `std` (ddof=1;
    None when n < 2) and `n` finite values (mean None when n == 0), in the metric's unit."""

    mean: float | None
    std: float | None
    n: int

    def as_dict(self) -> dict:
        """Returns {"mean", "std", "n"} (JSON-able)."""
        return {"mean": self.mean, "std": self.std, "n": self.n}


def estimate(values) -> Estimate:
    """Returns the Estimate of `values`, keeping only finite numbers (NaN, inf, None and
    non-numbers are repeats that produced no value)."""
    vals = [float(v) for v in values if is_finite_number(v)]
    if not vals:
        return Estimate(None, None, 0)
    return Estimate(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def within_noise(a: Estimate, b: Estimate, z: float = TIE_Z) -> bool | None:
    """Returns True when a's and b's means differ by at most `z` standard errors of the
    difference (see the module docstring), False when by more, None when either has no
    noise estimate (n < 2) or no mean."""
    if a.mean is None or b.mean is None or a.std is None or b.std is None:
        return None
    return abs(a.mean - b.mean) <= z * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def configuration_key(config: dict) -> str:
    """Returns a string naming `config` without its seed: equal for the repeats of one
    configuration, different for different configurations."""
    return json.dumps({k: v for k, v in config.items() if k != SEED_KEY}, sort_keys=True, default=str)


def group_repeats(trials: list[dict]) -> list[list[dict]]:
    """Returns the trials (summary entries with "config") grouped by configuration, groups
    in the order of their first trial, trials in their given order."""
    groups: dict[str, list[dict]] = {}
    for t in trials:
        groups.setdefault(configuration_key(t.get("config") or {}), []).append(t)
    return list(groups.values())


def has_repeats(trials: list[dict]) -> bool:
    """Returns whether some configuration ran under two or more distinct seeds (then its
    numbers can be aggregated and compared with their noise)."""
    return any(len({json.dumps((t.get("config") or {}).get(SEED_KEY), default=str) for t in group}) > 1
               for group in group_repeats(trials))


def aggregate_group(group: list[dict]) -> dict:
    """Returns one configuration's aggregate over its trials: {"config" (without the seed),
    "seeds", "trial_ids", "n" (finished repeats), "failed" (repeats that ended in ERROR),
    "metrics": {name: Estimate.as_dict()}} over every numeric metric its finished trials report."""
    done = [t for t in group if t.get("status") == "TERMINATED"]
    names = sorted({k for t in done for k, v in t["metrics"].items() if is_finite_number(v)})
    return {"config": {k: v for k, v in group[0]["config"].items() if k != SEED_KEY},
            "seeds": [t["config"].get(SEED_KEY) for t in group], "trial_ids": [t["trial_id"] for t in group],
            "n": len(done), "failed": len(group) - len(done),
            "metrics": {m: estimate(t["metrics"].get(m) for t in done).as_dict() for m in names}}


def as_estimate(stats: dict | None) -> Estimate:
    """Returns the Estimate of an aggregate's {"mean", "std", "n"} dict (n 0 when missing)."""
    stats = stats or {}
    return Estimate(stats.get("mean"), stats.get("std"), stats.get("n", 0))


def ties_with_best(estimates: list[Estimate], mode: str) -> list[bool | None]:
    """Returns, per estimate, whether it is within the noise of the best one (lowest mean
    for mode "min", highest for "max"; the best itself is True): True / False / None as
    `within_noise` answers; None for estimates without a mean."""
    finite = [e for e in estimates if e.mean is not None]
    if not finite:
        return [None] * len(estimates)
    best = (min if mode == "min" else max)(finite, key=lambda e: e.mean)
    return [None if e.mean is None else True if e is best else within_noise(best, e) for e in estimates]


def aggregate_configurations(trials: list[dict], metric: str, mode: str) -> list[dict]:
    """Returns the per-configuration aggregates (`aggregate_group`) of summary `trials`,
    best mean of `metric` first (mode "min" | "max"; configurations without one last), each
    with "tied_with_best": within the noise of the first (True / False / None, see
    `within_noise`)."""
    aggs = [aggregate_group(g) for g in group_repeats(trials)]
    sign = 1 if mode == "min" else -1
    aggs.sort(key=lambda a: (as_estimate(a["metrics"].get(metric)).mean is None,
                             sign * (as_estimate(a["metrics"].get(metric)).mean or 0.0)))
    ties = ties_with_best([as_estimate(a["metrics"].get(metric)) for a in aggs], mode)
    for a, tie in zip(aggs, ties):
        a["tied_with_best"] = tie
    return aggs


def format_estimate(e: Estimate, digits: int = 4) -> str:
    """Returns "mean ± std", both rounded to the std's second significant digit (so the
    mean shows as many decimals as the noise allows); the mean alone with `digits`
    significant digits when n < 2; "" when there is no mean."""
    if e.mean is None:
        return ""
    if e.std is None:
        return f"{e.mean:.{digits}g}"
    if e.std == 0:
        return f"{e.mean:.{digits}g} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(e.std)))
    return f"{e.mean:.{decimals}f} ± {e.std:.{decimals}f}"


def tie_mark(tied: bool | None) -> str:
    """Returns the table cell of a tie verdict: "≈" tied, "" separated, "?" unknown (n < 2)."""
    return "≈" if tied else "?" if tied is None else ""
