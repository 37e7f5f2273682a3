"""Pareto fronts against the brute-force definition."""
import itertools
import random

import pytest

from sweeper.reports.pareto import dominates, pareto_front


def brute_force(points, senses):
    """Indices of points no other point dominates, straight from the definition."""
    def better_eq(a, b, s):
        return a <= b if s == "min" else a >= b

    def strictly(a, b, s):
        return a < b if s == "min" else a > b

    out = []
    for i, p in enumerate(points):
        dominated = any(all(better_eq(q[k], p[k], s) for k, s in enumerate(senses))
                        and any(strictly(q[k], p[k], s) for k, s in enumerate(senses))
                        for j, q in enumerate(points) if j != i)
        if not dominated:
            out.append(i)
    return out


@pytest.mark.parametrize("senses", list(itertools.product(("min", "max"), repeat=2)) + [("min", "max", "min")])
def test_front_matches_brute_force_on_random_points(senses):
    rng = random.Random(1234)
    for trial in range(300):
        n = rng.randint(0, 40)
        if trial % 2:  # small integer grid: many ties and duplicates
            pts = [tuple(rng.randint(0, 5) for _ in senses) for _ in range(n)]
        else:
            pts = [tuple(rng.uniform(-10, 10) for _ in senses) for _ in range(n)]
        assert pareto_front(pts, senses) == brute_force(pts, senses), (pts, senses)


def test_known_small_case_and_duplicates():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (2.0, 3.0), (4.0, 1.0), (1.0, 6.0)]
    assert pareto_front(pts, ("min", "min")) == [0, 1, 3, 4]
    assert pareto_front([], ("min", "min")) == []
    assert dominates((1, 1), (1, 2), ("min", "min")) and not dominates((1, 1), (1, 1), ("min", "min"))


@pytest.mark.parametrize("points,senses", [
    ([(1.0, 2.0)], ("min", "low")),
    ([(1.0, 2.0, 3.0)], ("min", "min")),
    ([(float("nan"), 1.0)], ("min", "min")),
    ([(float("inf"), 1.0)], ("min", "min")),
])
def test_bad_input_is_one_line_value_error(points, senses):
    with pytest.raises(ValueError) as exc:
        pareto_front(points, senses)
    assert "\n" not in str(exc.value)
