"""The ONNX PTQ sweep on local Ray: fixed trials, two workers each exporting the graph once,
sizes and the quality-vs-size front in the summary, table and plot, W&B leaderboard run."""
import json
import math

import pytest
from ray import tune

from sweeper.experiment import Experiment
from sweeper.sweep import run_experiment
from sweeper.tasks import WikiText2PPL


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from sweeper.sweep import init_ray

    init_ray("sweeper-tests-onnx")
    yield
    ray.shutdown()


def test_onnx_sweep_exports_once_per_worker(ray_local, opt_small_dir, tmp_path, browser):
    rows = [{"algorithm": "fp32", "bits": None, "block_size": None},
            {"algorithm": "int8_qdq", "bits": 8, "block_size": None}]
    exp = Experiment(
        name="onnx_engine", model=str(opt_small_dir), recipe="onnx_ptq",
        task=WikiText2PPL(max_tokens=4096, context_length=128, stride=128),
        search_space={"algorithm": tune.grid_search(["rtn", "gptq"]), "bits": 4, "block_size": 32},
        fixed={"calibration_samples": 4}, trials=rows, device="cpu", workers=2, num_samples=1,
        scheduler="fifo", seed=0, wandb_project="sweeper-tests",
    )
    res = run_experiment(exp, results_dir=tmp_path, verbose=0)
    s = res.summary
    assert len(s["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in s["trials"])
    configs = sorted((t["config"]["algorithm"], t["config"]["bits"]) for t in s["trials"])
    assert configs == [("fp32", None), ("gptq", 4), ("int8_qdq", 8), ("rtn", 4)]
    for t in s["trials"]:
        assert {"algorithm", "bits", "block_size"} <= set(t["config"])
        assert math.isfinite(t["metrics"]["wikitext2_ppl"]) and t["metrics"]["model_size_mb"] > 0
    # one export per worker, though 6 jobs (the baseline on both workers at once + 4 trials) ran
    workers = s["workers"]
    assert sum(c["jobs_started"] for c in workers.values()) == 6
    for c in workers.values():
        assert c["onnx_exports"] == 1
        assert c["onnx_exports"] + c["onnx_cache_hits"] == c["jobs_started"]
    # the fp32 trial is the baseline graph, evaluated the same way
    fp32 = next(t for t in s["trials"] if t["config"]["algorithm"] == "fp32")
    assert fp32["metrics"]["wikitext2_ppl"] == pytest.approx(s["baseline"]["wikitext2_ppl"], rel=1e-9)
    assert fp32["metrics"]["model_size_mb"] == pytest.approx(s["baseline"]["model_size_mb"])
    # the report page, rendered by a real browser: a row per trial and the Pareto plot
    page = browser.render(res.results_dir / "report.html", "report_onnx_sweep")
    assert page.trial_rows == 4 and page.console_errors == []
    assert [i["alt"] for i in page.images] == [f"Pareto plot of {exp.name}"]
    assert all(i["complete"] and i["width"] > 100 for i in page.images)
    # quantized graphs are smaller; the front holds the smallest and the best
    sizes = {t["trial_id"]: t["metrics"]["model_size_mb"] for t in s["trials"]}
    assert all(sizes[t["trial_id"]] < fp32["metrics"]["model_size_mb"] for t in s["trials"] if t is not fp32)
    assert min(sizes, key=sizes.get) in s["pareto_size"]
    assert s["trials"][0]["trial_id"] in s["pareto_size"]  # the best perplexity
    run_dir = res.results_dir
    assert "front" in (run_dir / "summary.txt").read_text()
    assert (run_dir / "summary_pareto.png").stat().st_size > 0
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 2
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["pareto_size"] == s["pareto_size"]
    from sweeper.reports.wandb_offline import read_offline_run

    boards = [read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
    assert boards, "the sweep-level leaderboard run was not written"


SEEDS_EXPERIMENT_FILE = '''
from sweeper.experiment import Experiment
from sweeper.tasks import WikiText2PPL


def experiment(smoke=False):
    # Two fixed trials, each run under seeds 0 and 1: the seed picks INT8 QDQ's calibration
    # blocks (so its perplexity moves) and nothing in data-free RTN (so it must not).
    rows = [{{"algorithm": "int8_qdq", "bits": 8, "block_size": None}},
            {{"algorithm": "rtn", "bits": 4, "block_size": 32}}]
    return Experiment(name="onnx_seeds", model={model!r}, recipe="onnx_ptq",
                      task=WikiText2PPL(max_tokens=2048, context_length=128, stride=128),
                      fixed={{"calibration_samples": 2}}, trials=rows, device="cpu", workers=1, num_samples=0,
                      scheduler="fifo", seeds=2, wandb_project="sweeper-tests")
'''


def test_seeds_repeat_every_configuration_and_a_record_reruns_exactly(ray_local, opt_small_dir, tmp_path, capsys,
                                                                      monkeypatch):
    from sweeper.cli import build_experiment, main

    exp_file = tmp_path / "onnx_seeds.py"
    exp_file.write_text(SEEDS_EXPERIMENT_FILE.format(model=str(opt_small_dir)))
    exp = build_experiment(exp_file)  # as `sweeper run` builds it: the records say how to rerun
    s = run_experiment(exp, results_dir=tmp_path, verbose=0).summary
    assert s["seeds"] == 2 and len(s["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in s["trials"])
    runs = {}
    for t in s["trials"]:
        runs.setdefault(t["config"]["algorithm"], {})[t["config"]["seed"]] = t["metrics"]["wikitext2_ppl"]
    assert {a: sorted(r) for a, r in runs.items()} == {"int8_qdq": [0, 1], "rtn": [0, 1]}
    assert runs["int8_qdq"][0] != runs["int8_qdq"][1] and runs["rtn"][0] == runs["rtn"][1]
    configs = {c["config"]["algorithm"]: c for c in s["configurations"]}
    assert sorted(configs) == ["int8_qdq", "rtn"] and all(c["n"] == 2 for c in configs.values())
    ppl = configs["int8_qdq"]["metrics"]["wikitext2_ppl"]
    assert ppl["mean"] == pytest.approx(sum(runs["int8_qdq"].values()) / 2)
    assert ppl["std"] == pytest.approx(abs(runs["int8_qdq"][0] - runs["int8_qdq"][1]) / math.sqrt(2))
    assert configs["rtn"]["metrics"]["wikitext2_ppl"]["std"] == 0
    assert "mean ± std" in (tmp_path / "onnx_seeds" / "summary.txt").read_text()

    # Every trial has a record (versions, commit, device, seed, full config, how the sweep
    # was started); `sweeper rerun` runs one again from it alone. The seed-1 INT8 trial (its
    # seed picks the calibration blocks) gives the same perplexity and size exactly.
    run_dir = tmp_path / "onnx_seeds"
    trial = next(t for t in s["trials"] if t["config"]["algorithm"] == "int8_qdq" and t["config"]["seed"] == 1)
    record = json.loads((run_dir / "records" / f"{trial['trial_id']}.json").read_text())
    assert record["config"] == trial["config"] and record["seed"] == 1 and record["status"] == "TERMINATED"
    assert {"python", "torch", "onnxruntime", "transformers", "ray"} <= set(record["versions"])
    assert record["device"]["kind"] == "cpu" and record["device"]["name"]
    assert record["origin"]["experiment_file"] == str(exp_file) and record["origin"]["overrides"] == {}
    assert "git_commit" in record["origin"]  # None here: the file is outside any checkout
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B runs are tested above; here they only cost time
    capsys.readouterr()
    assert main(["rerun", str(run_dir), trial["trial_id"], "--storage", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"rerun of {trial['trial_id']}" in out and "wikitext2_ppl" in out
    again = json.loads((tmp_path / "again" / f"onnx_seeds_rerun_{trial['trial_id']}" / "summary.json").read_text())
    (new,) = again["trials"]
    assert new["config"]["algorithm"] == "int8_qdq" and new["config"]["seed"] == 1 and new["status"] == "TERMINATED"
    assert new["metrics"]["wikitext2_ppl"] == trial["metrics"]["wikitext2_ppl"]
    assert new["metrics"]["model_size_mb"] == trial["metrics"]["model_size_mb"]
