"""Seeds and noise on constructed numbers: estimates, the two-standard-error tie test,
noise-aware Pareto ties, the per-configuration aggregate of a summary, the leaderboard and
W&B table of repeated trials, the repeat param space, and the `seeds` input checks."""
import json
import math
import random
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune

from sweeper.reports import leaderboard as lb
from sweeper.errors import ConfigError
from sweeper.experiment import Experiment
from sweeper.noise import Estimate, estimate, has_repeats, ties_with_best, within_noise
from sweeper.reports.pareto import dominates_beyond_noise, pareto_front, tied_with_front
from sweeper.reports.summary_tables import summary_table
from sweeper.sweep import build_summary, repeat_space
from sweeper.tasks import WikiText2PPL


def test_estimate_is_mean_and_sample_std_of_finite_values():
    e = estimate([1.0, 2.0, 3.0, float("nan"), None])
    assert (e.mean, e.std, e.n) == (2.0, 1.0, 3)  # sample std (ddof=1) of 1, 2, 3 is 1
    assert estimate([5.0]) == Estimate(5.0, None, 1)
    assert estimate([float("inf")]) == Estimate(None, None, 0)


def test_within_noise_is_two_standard_errors_of_the_difference():
    a = Estimate(10.0, 1.0, 4)  # se of a difference with a like b: sqrt(1/4 + 1/4) = 0.7071
    assert within_noise(a, Estimate(11.4, 1.0, 4)) is True  # 1.4 <= 1.414
    assert within_noise(a, Estimate(11.5, 1.0, 4)) is False  # 1.5 > 1.414
    assert within_noise(Estimate(27.0, 0.0, 3), Estimate(27.0, 0.0, 3)) is True  # a seed that changes nothing
    assert within_noise(Estimate(27.0, 0.0, 3), Estimate(27.01, 0.0, 3)) is False
    assert within_noise(a, Estimate(10.0, None, 1)) is None  # one run: no noise estimate
    # the best (lowest mean for min) is tied with itself; max picks the highest
    ests = [Estimate(11.5, 1.0, 4), a, Estimate(11.4, 1.0, 4), Estimate(10.5, None, 1), Estimate(None, None, 0)]
    assert ties_with_best(ests, "min") == [False, True, True, None, None]
    assert ties_with_best(ests, "max") == [True, False, True, None, None]


def test_pareto_marks_points_dominated_only_within_noise_as_tied():
    e = Estimate
    points = [
        (e(20.0, 0.5, 3), e(100.0, 0.0, 3)),  # A: front
        (e(20.4, 0.5, 3), e(100.0, 0.0, 3)),  # B: worse than A by 0.4 < 2 se (0.816), same size: tied
        (e(23.0, 0.5, 3), e(110.0, 0.0, 3)),  # C: A beats it beyond the noise
        (e(20.2, 0.5, 3), e(101.0, 0.0, 3)),  # D: ppl within noise, but A is surely smaller
        (e(21.0, None, 1), e(120.0, None, 1)),  # E: one run, dominated: can't tell
        (e(19.0, 0.5, 3), e(200.0, 0.0, 3)),  # F: front
    ]
    senses = ("min", "min")
    assert pareto_front([tuple(x.mean for x in p) for p in points], senses) == [0, 5]
    assert tied_with_front(points, senses) == [True, True, False, False, None, True]
    assert dominates_beyond_noise(points[0], points[1], senses) is False
    assert dominates_beyond_noise(points[1], points[0], senses) is False  # B does not dominate A at all
    assert dominates_beyond_noise(points[0], points[2], senses) is True


def _result(config, ppl, size, trial_id, error=None):
    """One ResultGrid entry as build_summary reads it."""
    metrics = {} if error else {"wikitext2_ppl": ppl, "model_size_mb": size, "epoch": 0, "worker_id": "cpu-0",
                                "trial_id": trial_id}
    return SimpleNamespace(metrics=metrics, config=config, error=SimpleNamespace(cause=error) if error else None,
                           path=f"/r/{trial_id}", checkpoint=None)


# (bits, seed) -> (ppl, size) or an error; bits 6 lost one repeat
RUNS = {(8, 0): (27.0, 100.0), (8, 1): (27.2, 100.0), (8, 2): (27.4, 100.0),
        (6, 0): (27.3, 80.0), (6, 1): (27.5, 80.0), (6, 2): "RuntimeError: job failed on cpu-0: killed",
        (4, 0): (30.0, 60.0), (4, 1): (31.0, 60.0), (4, 2): (32.0, 60.0)}


def _repeated_summary():
    grid = []
    for i, ((bits, seed), v) in enumerate(RUNS.items()):
        config = {"algorithm": "rtn", "bits": bits, "seed": seed}
        grid.append(_result(config, *(v if isinstance(v, tuple) else (None, None)), f"t_{i:05d}",
                            error=v if isinstance(v, str) else None))
    exp = SimpleNamespace(name="seeded", model="opt-ref", recipe="onnx_ptq", device="cpu",
                          objective=("wikitext2_ppl", "min"), seed=0, origin={})
    baseline = {"wikitext2_ppl": 26.0, "model_size_mb": 400.0, "eval_settings": {"dataset": "wikitext", "split": "test"}}
    return build_summary(exp, grid, baseline, {}, [], {})


def test_summary_aggregates_each_configuration_over_its_seeds():
    s = _repeated_summary()
    assert len(s["trials"]) == 9  # every run kept
    configs = s["configurations"]
    assert [c["config"]["bits"] for c in configs] == [8, 6, 4]  # best mean first
    by_bits = {c["config"]["bits"]: c for c in configs}
    assert all("seed" not in c["config"] for c in configs)
    assert sorted(by_bits[8]["seeds"]) == [0, 1, 2] and by_bits[6]["n"] == 2 and by_bits[6]["failed"] == 1
    for bits, c in by_bits.items():
        values = [v[0] for (b, _), v in RUNS.items() if b == bits and isinstance(v, tuple)]
        ppl = c["metrics"]["wikitext2_ppl"]
        assert ppl["n"] == len(values)
        assert ppl["mean"] == pytest.approx(statistics.fmean(values))
        assert ppl["std"] == pytest.approx(statistics.stdev(values))  # ddof=1
    # bits 6 vs the best (8): |27.4 - 27.2| = 0.2 <= 2 * sqrt(0.2²/3 + 0.1414²/2) = 0.306
    assert [c["tied_with_best"] for c in configs] == [True, True, False]
    # sizes are exact (std 0): each smaller size has a worse mean, so all three are on the front
    assert [c["pareto_size"] for c in configs] == [True, True, True]
    table = summary_table(s)
    assert "27.20 ± 0.20" in table and "31.0 ± 1.0" in table and "2 (1 failed)" in table
    assert table.index("per configuration") < table.index("runs:")
    assert json.loads(json.dumps(s))["configurations"] == configs  # JSON-able as written


def test_no_aggregate_without_repeats():
    s = _repeated_summary()
    once = [t for t in s["trials"] if t["config"]["seed"] == 0]
    assert not has_repeats(once) and has_repeats(s["trials"])


def test_leaderboard_and_wandb_rank_configurations_by_mean(tmp_path, monkeypatch):
    s = _repeated_summary()
    board = lb.build_board([{**s, "source": "seeded.json"}])
    assert board.repeated and "seed" not in board.columns
    assert [r["bits"] for r in board.rows] == [8, 6, 4] and [r["rank"] for r in board.rows] == [1, 2, 3]
    top = board.rows[0]
    assert top["n"] == 3 and top["wikitext2_ppl"] == pytest.approx(27.2) and top["± wikitext2_ppl"] == pytest.approx(0.2)
    assert top["Δ wikitext2_ppl"] == pytest.approx(1.2) and len(top["trial_ids"]) == 3
    assert [r["tied_best"] for r in board.rows] == [True, True, False]
    assert [r["pareto_size_tied"] for r in board.rows] == [True, True, True]
    assert board.rows[1]["error"].startswith("1 of 3 runs failed: job failed")
    text = lb.format_board(board, "table")
    assert "≈" in text and "± wikitext2_ppl" in text and "2 standard errors" in text
    assert json.loads(lb.format_board(board, "json"))["rows"][2]["tied_best"] is False
    with pytest.raises(ConfigError, match="--group-by='seed'"):
        lb.build_board([{**s, "source": "seeded.json"}], group_by="seed")

    from sweeper.reports.wandb_offline import read_offline_run
    from sweeper.reports.wandb_report import log_leaderboard_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = log_leaderboard_run("sweeper-tests", board.rows, board.columns, None, tmp_path, "seeded")
    run = read_offline_run(run_dir)
    assert run["summary"]["n_trials"] == 9 and run["summary"]["n_configurations"] == 3
    table = json.loads((Path(run_dir) / "files" / run["history"][0]["leaderboard/path"]).read_text())
    col = table["columns"].index("± wikitext2_ppl")
    assert [row[col] for row in table["data"]] == pytest.approx([0.2, math.sqrt(0.02), 1.0])


def test_repeat_space_shares_a_samples_draws_across_its_seeds():
    from ray.tune.search.variant_generator import generate_variants
    import numpy as np

    rng = random.Random(0)
    space = {"algorithm": tune.grid_search(["rtn", "gptq"]), "damp_percent": tune.uniform(0.01, 0.1),
             # drawn per grid variant by Tune: without RepeatedDraw each seed would get its own
             "act_order": tune.sample_from(lambda spec: rng.random() < 0.5 if spec.config.algorithm == "gptq" else False)}
    exp = Experiment(name="r", model="opt-ref", recipe="onnx_ptq", task=None, seeds=3, fixed={"seed": 5})
    assert exp.repeat_seeds() == [5, 6, 7]
    repeated = repeat_space(exp, space)
    state = np.random.RandomState(0)
    configs = [spec["config"] for sample in range(6)
               for _, spec in generate_variants({"config": repeated}, constant_grid_search=True, random_state=state)]
    assert len(configs) == 6 * 2 * 3
    groups = {}
    for i, c in enumerate(configs):
        groups.setdefault((i // 6, c["algorithm"]), []).append(c)
    for rows in groups.values():
        assert sorted(c["seed"] for c in rows) == [5, 6, 7]
        assert len({(c["damp_percent"], c["act_order"]) for c in rows}) == 1  # the repeats are one configuration
    # and samples still draw anew
    assert len({c["damp_percent"] for c in configs}) == 6
    assert len({c["act_order"] for (s, a), rows in groups.items() if a == "gptq" for c in rows}) == 2
    assert repeat_space(Experiment(name="r", model="opt-ref", recipe="onnx_ptq", task=None), space) is space


def _exp(**kw):
    base = dict(name="s", model="gpt2-ref", recipe="onnx_ptq", task=WikiText2PPL(max_tokens=1000))
    return Experiment(**{**base, **kw})


@pytest.mark.parametrize("kwargs,needle", [
    ({"seeds": 0}, "seeds=0"),
    ({"seeds": 2.0}, "seeds=2.0"),
    ({"seeds": 2, "search_space": {"seed": tune.grid_search([1, 2])}}, "seeds=2"),
    ({"seeds": 2, "trials": [{"algorithm": "rtn", "bits": 4, "seed": 3}]}, "seeds=2"),
    ({"seeds": 3, "fixed": {"seed": 2**31 - 2}}, "seed=2147483648"),  # the last repeat's seed
])
def test_bad_seeds_is_one_line(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        _exp(**kwargs).validate()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_repeat_seeds_start_where_a_single_run_would():
    assert _exp(seeds=2).repeat_seeds() == [0, 1]  # onnx_ptq's default seed
    assert _exp(recipe="onnx_precision", seed=7, seeds=2).repeat_seeds() == [7, 8]  # no recipe seed: the job's
    assert not _exp(recipe="onnx_precision").seed_in_recipe and _exp().seed_in_recipe


def test_cli_seeds_flag(capsys):
    from sweeper.cli import build_experiment, main

    assert main(["run", "experiments/opt125m_gptq.py", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seeds=0" in err and "\n" not in err
    assert build_experiment("experiments/opt125m_gptq.py", smoke=True, seeds=3).seeds == 3
