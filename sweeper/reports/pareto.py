"""Pareto fronts of trial metrics (pure Python, no numpy), and which points the noise
between seeds leaves tied with the front."""
from __future__ import annotations

import math

from ..noise import Estimate, within_noise

SENSES = ("min", "max")


def dominates(a, b, senses) -> bool:
    """Returns True when point `a` is at least as good as `b` in every objective and
    strictly better in one (the textbook definition; `senses` says min or max per axis)."""
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_front(points, senses) -> list[int]:
    """Returns the indices (ascending) of the non-dominated points.

    `points` is a sequence of equal-length tuples of finite numbers, `senses` one of
    "min"/"max" per coordinate. Equal points do not dominate each other, so duplicates on
    the front are all kept. Raises ValueError on a malformed input."""
    senses = tuple(senses)
    if not senses or any(s not in SENSES for s in senses):
        raise ValueError(f"pareto_front: senses={senses!r} is not allowed; allowed: a non-empty tuple of 'min'/'max'")
    pts = []
    for i, p in enumerate(points):
        p = tuple(p)
        if len(p) != len(senses):
            raise ValueError(f"pareto_front: point {i} has {len(p)} coordinates; expected {len(senses)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p):
            raise ValueError(f"pareto_front: point {i}={p!r} is not allowed; allowed: finite numbers")
        # everything below minimises
        pts.append(tuple(-v if s == "max" else v for v, s in zip(p, senses)))
    if len(senses) == 2:
        return _front_2d(pts)
    return [i for i, p in enumerate(pts) if not any(dominates(q, p, ("min",) * len(p)) for q in pts)]


def _front_2d(pts: list[tuple]) -> list[int]:
    # Sweep by x: a point is dominated by one with the same x and a smaller y, or by any
    # point with a smaller x and a y no larger; so per x only the smallest y can survive,
    # and only if it beats every y seen at smaller x. O(n log n).
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    front, best_y, k = [], math.inf, 0
    while k < len(order):
        x = pts[order[k]][0]
        group = []
        while k < len(order) and pts[order[k]][0] == x:
            group.append(order[k])
            k += 1
        y_min = pts[group[0]][1]  # sorted by (x, y): the group's first has the smallest y
        if y_min < best_y:
            front += [i for i in group if pts[i][1] == y_min]
            best_y = y_min
    return sorted(front)


def dominates_beyond_noise(a: tuple[Estimate, ...], b: tuple[Estimate, ...], senses) -> bool | None:
    """Returns whether `a` dominates `b` by more than the noise: a's means dominate b's
    (`dominates`), and on some coordinate where a's mean is strictly better the two are
    not `within_noise`. False when the means do not dominate or every better coordinate
    is within the noise; None when that can't be told (a better coordinate without a
    noise estimate, n < 2, and none separated)."""
    if not dominates([e.mean for e in a], [e.mean for e in b], senses):
        return False
    unknown = False
    for x, y in zip(a, b):
        if x.mean == y.mean:
            continue
        tied = within_noise(x, y)
        if tied is False:
            return True
        unknown = unknown or tied is None
    return None if unknown else False


def tied_with_front(points, senses) -> list[bool | None]:
    """Returns, per point (a tuple of `Estimate`s, one per coordinate, each with a mean),
    whether no other point dominates it beyond the noise (`dominates_beyond_noise`): True
    for every point of the front of the means and for a point dominated only within the
    noise ("tied with the front"), False for one some point dominates beyond the noise,
    None when only dominators without a noise estimate remain. O(n²) comparisons."""
    senses = tuple(senses)
    out = []
    for i, p in enumerate(points):
        verdicts = [dominates_beyond_noise(q, p, senses) for j, q in enumerate(points) if j != i]
        out.append(False if True in verdicts else None if None in verdicts else True)
    return out
