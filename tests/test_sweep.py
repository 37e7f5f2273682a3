"""The sweep engine end to end on local Ray: pooled workers, caching counters, ASHA
stops freeing workers, W&B offline runs, the summary schema (the README's smoke sweep is checked in
test_job_submit, which runs it as `ray job submit` does)."""
import json
import math
from pathlib import Path

import pytest
from ray import tune

from sweeper.experiment import Experiment
from sweeper.sweep import run_experiment
from sweeper.tasks import WikiText2PPL
from sweeper.reports.wandb_offline import read_offline_run


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from sweeper.sweep import init_ray

    init_ray("sweeper-tests")  # the local Ray a sweep starts: 2 CPUs here, room for trials
    yield
    ray.shutdown()


def _offline_runs(run_dir: Path) -> list[dict]:
    """The trials' offline W&B runs (the sweep-level leaderboard run left out)."""
    runs = [read_offline_run(d) for d in sorted((run_dir / "wandb").rglob("offline-run-*")) if d.is_dir()]
    return [r for r in runs if not r["config"].get("sweeper_leaderboard")]


def test_four_trials_on_two_workers_asha_frees_workers(ray_local, ref_model_dir, tmp_path, browser):
    # Two 16-bit-activation trials run first; the two 4-bit ones that follow are far worse
    # at the first rung, so ASHA stops them and their jobs must be cancelled at once.
    exp = Experiment(
        name="engine", model="gpt2-ref", recipe="aimet_qat",
        task=WikiText2PPL(max_tokens=2048, context_length=128, stride=64),
        search_space={"output_bw": tune.grid_search([16, 16, 4, 4])},
        fixed={"quant_scheme": "tf", "epochs": 3, "steps_per_epoch": 3, "calibration_batches": 2,
               "seq_len": 64, "batch_size": 4, "lr": 1e-5, "deploy_check": "last_report"},
        device="cpu", workers=2, num_samples=1, scheduler="asha", grace_period=1, seed=0,
        wandb_project="sweeper-tests",
    )
    res = run_experiment(exp, results_dir=tmp_path, verbose=0)
    s = res.summary
    assert set(s) >= {"experiment", "metric", "mode", "baseline", "trials"}
    assert (s["experiment"], s["metric"], s["mode"]) == ("engine", "wikitext2_ppl", "min")
    assert len(s["trials"]) == 4 and all(t["status"] == "TERMINATED" for t in s["trials"])
    assert math.isfinite(s["baseline"]["wikitext2_ppl"])
    # base model loaded once per worker, though 6 jobs (the baseline on both workers at
    # once, so neither starts its first trial cold, + 4 trials) ran
    workers = s["workers"]
    assert len(workers) == 2
    assert all(c["model_loads"] == 1 for c in workers.values())
    assert sum(c["jobs_started"] for c in workers.values()) == 6
    assert sum(c["model_cache_hits"] for c in workers.values()) == 4
    # ASHA stopped the 4-bit trials after their first report; their jobs were cancelled
    by_bw = {}
    for t in s["trials"]:
        by_bw.setdefault(t["config"]["output_bw"], []).append(t)
    assert all(t["metrics"]["epoch"] == 3 for t in by_bw[16])
    assert all(t["metrics"]["epoch"] < 3 for t in by_bw[4])
    assert min(t["metrics"]["wikitext2_ppl"] for t in by_bw[4]) > max(t["metrics"]["wikitext2_ppl"] for t in by_bw[16])
    assert sum(c["jobs_cancelled"] for c in workers.values()) == 2
    assert sum(c["jobs_done"] for c in workers.values()) == 4
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 2 and s["pool"]["kills"] == 0
    # one W&B offline run per trial, holding its per-epoch perplexities
    runs = _offline_runs(res.results_dir)
    assert len(runs) == 4
    for run in runs:
        ppl = [h["wikitext2_ppl"] for h in run["history"] if "wikitext2_ppl" in h]
        assert ppl and all(math.isfinite(p) for p in ppl)
        assert run["config"]["output_bw"] in (4, 16)
    # summary file and best encodings
    on_disk = json.loads(res.summary_path.read_text())
    assert on_disk["trials"][0]["trial_id"] == s["best_trial"]
    enc = json.loads(Path(s["best_encodings"]).read_text())
    assert enc
    # and its deployable graph, evaluated beside the sim
    assert Path(s["best_model"]).name == "best_model.onnx" and Path(s["best_model"]).stat().st_size > 0
    assert math.isfinite(on_disk["trials"][0]["metrics"]["deploy_wikitext2_ppl"])
    # the report page, rendered by a real browser: a row per trial, the curves per epoch
    page = browser.render(res.results_dir / "report.html", "report_asha_sweep")
    assert page.trial_rows == 4 and page.baseline_rows == 1
    assert [i["alt"] for i in page.images] == ["engine metric per epoch"]
    assert all(i["complete"] and i["width"] > 100 for i in page.images) and page.console_errors == []
    assert "Failed trials (0)" in page.text
    # every report checkpointed its encodings; each trial keeps only its latest
    trial_dirs = [d for d in res.results_dir.iterdir() if (d / "params.json").is_file()]
    assert len(trial_dirs) == 4 and all(len(list(d.glob("checkpoint_*"))) == 1 for d in trial_dirs)
