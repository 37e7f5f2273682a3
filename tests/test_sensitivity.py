"""Per-layer sensitivity (sweeper/sensitivity.py), mixed precision searched with Optuna, and
the checks that refuse a bad stage or searcher before Ray starts."""
import json

import pytest
from ray import tune

from sweeper.errors import ConfigError
from sweeper.experiment import Experiment
from sweeper.sensitivity import LayerJob, layer_rows, rank_correlation, ranking_of
from sweeper.tasks import WikiText2PPL

EVAL = WikiText2PPL(split="test", max_tokens=2048, context_length=128, stride=128, batch_size=8)


def test_rows_rank_the_most_harmful_first():
    layers = ["a", "b", "c", "d"]
    alone = {"a": 10.5, "b": 12.0, "c": 9.9, "d": 11.0}
    but = {"a": 13.0, "b": 11.5, "c": 13.2, "d": 12.9}
    outcomes = {LayerJob("list"): {"ppl": 10.0}, LayerJob("all"): {"ppl": 13.4}}
    outcomes.update({LayerJob("alone", k): {"ppl": v} for k, v in alone.items()})
    outcomes.update({LayerJob("all_but", k): {"ppl": v} for k, v in but.items()})
    rows, facts = layer_rows(layers, outcomes, "ppl", "min")
    assert [r["layer"] for r in rows] == ["b", "d", "a", "c"] and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert facts == {"fp32": 10.0, "all_quantized": 13.4}
    by = {r["layer"]: r for r in rows}
    assert by["b"]["harm"] == pytest.approx(2.0) and by["b"]["harm %"] == pytest.approx(20.0)
    assert by["c"]["harm"] == pytest.approx(-0.1)  # better than FP32 alone
    assert by["b"]["recovered"] == pytest.approx(13.4 - 11.5)  # keeping b in float recovers most
    # a metric to maximise: a drop is harm
    acc = {LayerJob("list"): {"acc": 0.9}, **{LayerJob("alone", k): {"acc": 0.9 - v / 100} for k, v in alone.items()}}
    assert ranking_of(layer_rows(layers, acc, "acc", "max")[0]) == ["b", "d", "a", "c"]
    # ties keep the model's order
    assert ranking_of([{"layer": "x", "harm": 1.0}, {"layer": "y", "harm": 1.0}]) == ["x", "y"]


def test_rank_correlation_is_spearmans():
    from scipy.stats import spearmanr

    a = ["l0", "l1", "l2", "l3", "l4", "l5"]
    for b in (list(a), a[::-1], ["l1", "l0", "l2", "l5", "l3", "l4"]):
        want = spearmanr([a.index(x) for x in a], [b.index(x) for x in a]).statistic
        assert rank_correlation(a, b) == pytest.approx(want)
    with pytest.raises(ValueError):
        rank_correlation(a, a[:-1] + ["other"])


def _exp(opt_small_dir, **kw) -> Experiment:
    base = dict(name="sens", model=str(opt_small_dir), recipe="onnx_ptq", task=EVAL,
                search_space={"algorithm": "rtn", "bits": 2, "block_size": 32}, device="cpu", num_samples=1)
    return Experiment(**{**base, **kw})


@pytest.mark.parametrize("kw,field,word", [
    ({"sensitivity": {"algorithm": "hqq", "bits": 4, "block_size": 32}}, "sensitivity", "algorithm rtn or gptq"),
    ({"sensitivity": ["rtn"]}, "sensitivity", "a dict of recipe fields"),
    ({"sensitivity": {"algorithm": "rtn", "bits": 2, "block_size": 32}, "sensitivity_views": ["alone", "half"]},
     "sensitivity_views", "alone, all_but"),
    ({"sensitivity": {"algorithm": "rtn", "bits": 2, "block_size": 32}, "fixed": {"float_layers": ["x"]}},
     "float_layers", "the sensitivity stage sets float_layers itself"),
    ({"sensitivity_task": EVAL}, "sensitivity_task", "None without a sensitivity stage"),
    ({"search_space": {"algorithm": "rtn", "bits": 2, "block_size": 32, "protected_layers": tune.choice([0, 2])}},
     "protected_layers", "give the experiment a sensitivity stage"),
    ({"searcher": "optuna", "search_space": {"algorithm": "rtn", "bits": 4, "block_size": tune.grid_search([32, 64])}},
     "searcher", "optuna samples: use tune.choice"),
    ({"searcher": "optuna"}, "searcher", "at least one sampled dimension"),
    ({"searcher": "hyperopt"}, "searcher", "'random', 'optuna'"),
])
def test_bad_stage_or_searcher_is_one_line_before_ray(opt_small_dir, kw, field, word):
    import ray

    with pytest.raises(ConfigError, match=word) as err:
        _exp(opt_small_dir, **kw).validate()
    assert field in str(err.value) and "\n" not in str(err.value)
    assert not ray.is_initialized()


def test_a_recipe_without_layer_fields_has_no_stage(opt_small_dir):
    Experiment(name="s", model=str(opt_small_dir), recipe="aimet_qat", task=EVAL, device="cpu",
               sensitivity={"param_bw": 4}).validate()  # aimet QuantSim: per-module choices
    exp = Experiment(name="s", model=str(opt_small_dir), recipe="onnx_precision", task=EVAL, device="cpu",
                     sensitivity={"precision": "fp16"})
    with pytest.raises(ConfigError, match="per-layer fields layers, float_layers, sensitivity_ranking") as e:
        exp.validate()
    assert "recipe onnx_precision has none" in str(e.value)


def test_stage_then_mixed_precision_search(opt_small_dir, tmp_path):
    """One sweep: the stage over all 12 layers (both views) on 2 workers, its ranking in
    every trial, uniform rows fixed, then Optuna over protected layers x widths; files,
    summary, report page and W&B; a second stage on the same folder is reused, not rerun."""
    import ray

    from sweeper.sweep import run_experiment, run_sensitivity

    uniform = {"protected_layers": 0, "protected_bits": None}
    exp = _exp(
        opt_small_dir, name="sens_mixed", sensitivity={"algorithm": "rtn", "bits": 2, "block_size": 32},
        sensitivity_views=["alone", "all_but"], workers=2, seed=0, scheduler="fifo", searcher="optuna", num_samples=2,
        trials=[{"algorithm": "fp32", "bits": None, "block_size": None, **uniform},
                {"algorithm": "rtn", "bits": 2, "block_size": 32, **uniform},
                {"algorithm": "rtn", "bits": 2, "block_size": 32, "protected_layers": 4, "protected_bits": 8}],
        search_space={"algorithm": "rtn", "bits": 2, "block_size": tune.choice([32, 64]),
                      "protected_layers": tune.choice([1, 2, 4]), "protected_bits": tune.choice([4, 8])},
        objectives=[("model_size_mb", "min"), ("wikitext2_ppl", "min")], constraints=["wikitext2_ppl <= 1.05 * fp32"],
        wandb_project="sweeper-tests")
    res = run_experiment(exp, results_dir=tmp_path, verbose=0)
    s, run_dir = res.summary, res.results_dir
    stage = s["sensitivity"]
    assert len(stage["ranking"]) == 12 == len(set(stage["ranking"])) and stage["jobs"] == 27 and stage["workers"] == 2
    assert stage["fp32"] == pytest.approx(s["baseline"]["wikitext2_ppl"], rel=1e-12)  # same task, nothing quantized
    harms = [r["harm"] for r in stage["rows"]]
    assert harms == sorted(harms, reverse=True) and [r["layer"] for r in stage["rows"]] == stage["ranking"]
    assert all("recovered" in r for r in stage["rows"])
    # every trial ran with the stage's ranking
    assert len(s["trials"]) == 5 and all(t["status"] == "TERMINATED" for t in s["trials"])
    assert all(t["config"]["sensitivity_ranking"] == stage["ranking"] for t in s["trials"])
    by = {(t["config"]["algorithm"], t["config"]["bits"], t["config"]["block_size"], t["config"]["protected_layers"],
           t["config"]["protected_bits"]): t["metrics"] for t in s["trials"]}
    two, mixed = by[("rtn", 2, 32, 0, None)], by[("rtn", 2, 32, 4, 8)]
    # the 4 most sensitive layers at 8 bits: bigger than all at 2 bits, and better
    assert two["model_size_mb"] < mixed["model_size_mb"] < by[("fp32", None, None, 0, None)]["model_size_mb"]
    assert mixed["wikitext2_ppl"] < two["wikitext2_ppl"]
    searched = [t for t in s["trials"] if t["config"]["protected_layers"] in (1, 2) or t["config"]["block_size"] == 64
                or (t["config"]["protected_layers"] == 4 and t["config"]["protected_bits"] == 4)]
    assert all(t["config"]["bits"] == 2 for t in searched)
    assert "pick" in s and s["objectives"][0] == {"metric": "model_size_mb", "mode": "min"}
    # files: table, plot, JSON, W&B run; the report page has the section and the plot
    folder = run_dir / "sensitivity"
    assert json.loads((folder / "sensitivity.json").read_text())["ranking"] == stage["ranking"]
    assert stage["ranking"][0] in (folder / "sensitivity.txt").read_text()
    assert (folder / "sensitivity.png").stat().st_size > 10_000
    from sweeper.reports.wandb_offline import read_offline_run

    logged = [read_offline_run(d) for d in sorted((folder / "wandb").glob("offline-run-*"))]
    assert logged and "sensitivity" in json.dumps(logged[0], default=str)
    page = (run_dir / "report.html").read_text()
    assert "Per-layer sensitivity" in page and 'alt="sens_mixed per-layer sensitivity"' in page
    assert "[12 items]" in (run_dir / "summary.txt").read_text()  # the ranking, not 12 names per row
    ray.shutdown()
    # the stage alone on the same folder: kept, not measured again
    again = run_sensitivity(exp, results_dir=tmp_path)
    assert again["ranking"] == stage["ranking"] and again["seconds"] == stage["seconds"]
    ray.shutdown()


def test_optuna_never_reruns_a_finished_configuration():
    """TPE repeats itself on a small categorical space; a repeat of a finished configuration
    (a fixed trial's included) is answered with its result and drawn again, not run."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from sweeper.searchers import FixedFirst

    inner = OptunaSearch(metric="m", mode="min", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1), seed=0)
    search = FixedFirst([{"a": 1, "b": "x", "c": 5}], inner)
    assert search.set_search_properties(None, None, {"a": tune.choice([1, 2]), "b": tune.choice(["x", "y"]), "c": 5})
    seen = []
    for i in range(4):
        config = search.suggest(f"t{i}")
        seen.append((config["a"], config["b"]))
        search.on_trial_complete(f"t{i}", {"m": float(config["a"]) + (config["b"] == "y")})
    assert sorted(seen) == [(1, "x"), (1, "y"), (2, "x"), (2, "y")]  # all four, none twice
    assert search.redrawn > 0  # TPE did suggest a finished one, and was told its result instead
    # every configuration finished: the next draw repeats one rather than stopping the sweep
    assert search.suggest("t9") is not None
