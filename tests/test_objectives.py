"""Objectives, constraints, feasibility, the feasible Pareto front and the pick, on
constructed results (checked against brute-force definitions), and bad goals refused in
one line before Ray starts."""
import math
import random

import pytest

from sweeper.errors import ConfigError
from sweeper.experiment import Experiment
from sweeper.objectives import Objective, feasibility, feasible_front, parse_constraint, parse_objective, pick
from sweeper.tasks import WikiText2PPL
from tests.test_leaderboard import sweeps  # noqa: F401 - the fixture
from tests.test_pareto import brute_force


def test_constraint_forms_and_their_bounds():
    base = {"wikitext2_ppl": 40.0, "glue_score": 90.0}
    cases = {
        "wikitext2_ppl <= 1.01 * fp32": 40.4, "wikitext2_ppl<=fp32*1.01": 40.4, "wikitext2_ppl <= fp32": 40.0,
        "glue_score >= fp32 - 1": 89.0, "glue_score > fp32 + 0.5": 90.5, "latency_ms < 50": 50.0,
        "latency_ms < 5e1": 50.0,
    }
    for text, bound in cases.items():
        c = parse_constraint(text)
        assert c.bound(base) == pytest.approx(bound), text
    c = parse_constraint("wikitext2_ppl <= 1.01 * fp32")
    assert c.holds({"wikitext2_ppl": 40.4}, base) and not c.holds({"wikitext2_ppl": 40.41}, base)
    assert not c.holds({"wikitext2_ppl": math.nan}, base) and not c.holds({}, base)
    assert not c.holds({"wikitext2_ppl": 1.0}, {})  # a relative bound without a baseline never holds
    assert parse_objective("model_size_mb:min") == Objective("model_size_mb", "min") == parse_objective(("model_size_mb", "min"))


@pytest.mark.parametrize("bad", ["wikitext2_ppl == 40", "wikitext2_ppl <= 2 * baseline", "<= 3", "ppl <= fp32 ** 2", 7])
def test_bad_constraint_is_one_line(bad):
    with pytest.raises(ConfigError) as e:
        parse_constraint(bad)
    assert "\n" not in str(e.value) and "constraints" in str(e.value)


def test_feasibility_front_and_pick_match_their_definitions():
    rng = random.Random(7)
    base = {"wikitext2_ppl": 40.0}
    trials = []
    for i in range(60):
        m = {"wikitext2_ppl": rng.uniform(39.5, 42.0), "model_size_mb": rng.choice([60, 80, 100, 120, 140]) + rng.random(),
             "latency_ms": rng.uniform(5, 30)}
        status = "ERROR" if i % 11 == 5 else "TERMINATED"
        if i % 13 == 4:
            m["wikitext2_ppl"] = math.nan
        trials.append({"trial_id": f"t{i:02d}", "status": status, "metrics": m})
    constraints = [parse_constraint("wikitext2_ppl <= 1.01 * fp32"), parse_constraint("latency_ms < 25")]
    objectives = [Objective("model_size_mb", "min"), Objective("wikitext2_ppl", "min")]
    ok = feasibility(trials, base, constraints)
    want = [t["status"] == "TERMINATED" and t["metrics"]["wikitext2_ppl"] <= 40.4 and t["metrics"]["latency_ms"] < 25
            for t in trials]
    assert ok == want and 0 < sum(ok) < len(trials)
    feas = [t for t, f in zip(trials, ok) if f]
    points = [(t["metrics"]["model_size_mb"], t["metrics"]["wikitext2_ppl"]) for t in feas]
    assert feasible_front(trials, objectives, ok) == [feas[i]["trial_id"] for i in brute_force(points, ("min", "min"))]
    # the pick: the smallest feasible model (INC's answer to "the smallest within 1% of FP32")
    assert pick(trials, objectives, ok) == min(feas, key=lambda t: t["metrics"]["model_size_mb"])["trial_id"]
    assert pick(trials, objectives, [False] * len(trials)) is None
    # a max objective picks the largest
    assert pick(trials, [Objective("latency_ms", "max")], ok) == max(feas, key=lambda t: t["metrics"]["latency_ms"])["trial_id"]


def _exp(opt_small_dir, **kw):
    return Experiment(name="g", model=str(opt_small_dir), recipe="onnx_ptq", task=WikiText2PPL(max_tokens=2048), **kw)


@pytest.mark.parametrize("kw,word", [
    ({"objectives": [("model_size_mb", "smallest")]}, "direction"),
    ({"objectives": ["wikitext2_pp:min"]}, "a metric the sweep reports"),
    ({"objectives": ["model_size_mb:min", "model_size_mb:max"]}, "one direction"),
    ({"constraints": ["accuracy >= fp32 - 1"]}, "a constraint on a metric the sweep reports"),
    ({"constraints": ["wikitext2_ppl <= -1 * fp32"]}, "can hold"),
    ({"stop": "first_feasible"}, "constraints to be feasible against"),
    ({"stop": "soon", "constraints": ["latency_ms < 50"]}, "stop"),
    ({"max_trials": 0}, "max_trials"),
    ({"time_budget_s": -5}, "time_budget_s"),
])
def test_bad_goals_are_one_line_before_ray(opt_small_dir, kw, word):
    import ray

    with pytest.raises(ConfigError, match=word) as e:
        _exp(opt_small_dir, **kw).validate()
    assert "\n" not in str(e.value)
    assert not ray.is_initialized()


def test_goals_on_what_an_onnx_sweep_reports(opt_small_dir):
    exp = _exp(opt_small_dir, objectives=["model_size_mb:min", ("wikitext2_ppl", "min")],
               constraints=["wikitext2_ppl <= 1.01 * fp32", "latency_ms < 50"], stop="first_feasible",
               time_budget_s=600, max_trials=20).validate()
    objectives, constraints = exp.goals()
    assert [o.metric for o in objectives] == ["model_size_mb", "wikitext2_ppl"] and len(constraints) == 2


def test_leaderboard_shows_feasibility_and_the_pick(sweeps):  # noqa: F811
    import json

    from sweeper.reports import leaderboard as lb

    _, path = sweeps["qat"]
    s = json.loads(path.read_text())
    for t in s["trials"]:
        t["feasible"] = t["status"] == "TERMINATED" and t["metrics"]["wikitext2_ppl"] <= 42.0
    s["pick"] = next(t["trial_id"] for t in s["trials"] if t["feasible"])
    path.write_text(json.dumps(s))
    board = lb.build_board(lb.load_source(str(path)))
    cols = board.columns
    assert cols.index("feasible") + 1 == cols.index("pick") == cols.index("trial_id") - 1
    by_id = {r["trial_id"]: r for r in board.rows}
    assert [tid for tid, r in by_id.items() if r["pick"]] == [s["pick"]]
    assert all(r["feasible"] == next(t["feasible"] for t in s["trials"] if t["trial_id"] == tid) for tid, r in by_id.items())
    text = lb.format_board(board, "table")
    assert "feasible" in text and "yes" in text and "no" in text and "✓" in text
