"""Faults during a sweep: a worker killed mid-trial, a NaN trial, and a planted secret
that must appear in no output. (A killed driver: test_resume.py.)"""
import math
import threading
import time
from pathlib import Path

import pytest
from ray import tune

from sweeper.experiment import Experiment
from sweeper.sweep import run_experiment
from sweeper.tasks import WikiText2PPL

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "tests" / "plugins" / "fault_recipes.py")
EVAL = WikiText2PPL(max_tokens=2048, context_length=128, stride=64)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from sweeper.sweep import init_ray

    init_ray("sweeper-fault-tests")
    yield
    ray.shutdown()


def _kill_first_busy_worker(stop: threading.Event, killed: list):
    """Waits until a device worker has run a trial job for a while, then kills its process."""
    import ray
    from ray.util import list_named_actors

    while not stop.is_set() and not killed:
        names = [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("sweeper-worker-")]
        for a in names:
            handle = ray.get_actor(a["name"], namespace=a["namespace"])
            c = ray.get(handle.counters_snapshot.remote())
            if c["jobs_started"] >= 2 and c["jobs_done"] + c["jobs_failed"] + c["jobs_cancelled"] < c["jobs_started"]:
                time.sleep(1.5)  # mid-trial: its first epoch is under way
                ray.kill(handle, no_restart=False)  # the process dies; Ray starts a replacement
                killed.append(a["name"])
                return
        time.sleep(0.3)


def test_worker_killed_mid_trial_is_retried_and_nothing_is_lost(ray_local, ref_model_dir, tmp_path):
    exp = Experiment(name="killworker", model="gpt2-ref", recipe="planted_nan", task=EVAL, plugins=(PLUGIN,),
                     search_space={"epochs": tune.grid_search([2, 3, 4, 5])}, fixed={"epoch_seconds": 2.0},
                     workers=2, num_samples=1, scheduler="fifo", max_failures=2, wandb_project="sweeper-tests")
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_busy_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        s = run_experiment(exp, results_dir=tmp_path, verbose=0).summary
    finally:
        stop.set()
    assert killed, "no worker was killed"
    assert [t["status"] for t in s["trials"]] == ["TERMINATED"] * 4
    assert sorted(t["config"]["epochs"] for t in s["trials"]) == [2, 3, 4, 5]
    assert all(t["metrics"]["epoch"] == t["config"]["epochs"] for t in s["trials"])
    assert sorted(t["attempts"] for t in s["trials"]) == [1, 1, 1, 2]  # the killed trial, retried once
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 2 and s["pool"]["lost_jobs"] == 1


def test_nan_trial_fails_alone_with_its_reason(ray_local, ref_model_dir, tmp_path, capfd, monkeypatch):
    secret = "sk-planted-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)  # W&B stays offline (WANDB_MODE=offline)
    exp = Experiment(name="nantrial", model="gpt2-ref", recipe="planted_nan", task=EVAL, plugins=(PLUGIN,),
                     search_space={"nan_at_epoch": tune.grid_search([-1, 2, -1])}, fixed={"epochs": 3},
                     workers=2, num_samples=1, scheduler="fifo", max_failures=2, wandb_project="sweeper-tests")
    res = run_experiment(exp, results_dir=tmp_path, verbose=1)
    s = res.summary
    by_status = {}
    for t in s["trials"]:
        by_status.setdefault(t["status"], []).append(t)
    assert len(by_status["TERMINATED"]) == 2 and len(by_status["ERROR"]) == 1
    bad = by_status["ERROR"][0]
    assert bad["config"]["nan_at_epoch"] == 2
    assert "wikitext2_ppl is nan at epoch 2" in bad["error"]
    assert bad["attempts"] == 1  # a deterministic failure is not re-run by the retries
    assert s["failed"] == [{"trial_id": bad["trial_id"], "error": bad["error"]}]
    assert all(math.isfinite(t["metrics"]["wikitext2_ppl"]) for t in by_status["TERMINATED"])
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 2
    assert "ERROR" in res.table and "wikitext2_ppl is nan" in res.table
    page = (res.results_dir / "report.html").read_text()  # the report page lists it with its reason
    assert "Failed trials (1)" in page and f"{bad['trial_id']}</td>" in page and "wikitext2_ppl is nan at epoch 2" in page
    # the secret appears in no output: console, summary, Tune's files, W&B offline runs
    out, err = capfd.readouterr()
    assert secret not in out + err
    leaked = [p for p in Path(tmp_path).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


def test_out_of_memory_halves_the_batch_then_fails_alone(ray_local, ref_model_dir, tmp_path):
    """An injected CUDA out-of-memory error: the job runs again on its worker with half the
    training and evaluation batch, at most twice; the result says what it ran with; a trial
    that still does not fit ends as ERROR with the reason, and the others finish."""
    exp = Experiment(name="oomtrial", model="gpt2-ref", recipe="planted_oom", task=EVAL, plugins=(PLUGIN,),
                     search_space={"fits_batch": tune.grid_search([8, 4, 2, 0])}, fixed={"batch_size": 8},
                     workers=2, num_samples=1, scheduler="fifo", max_failures=0, wandb_project="sweeper-tests")
    s = run_experiment(exp, results_dir=tmp_path, verbose=0).summary
    by_fit = {t["config"]["fits_batch"]: t for t in s["trials"]}
    assert by_fit[8]["status"] == "TERMINATED" and "oom_retries" not in by_fit[8]["metrics"]
    for fits, retries in ((4, 1), (2, 2)):
        m = by_fit[fits]["metrics"]
        assert by_fit[fits]["status"] == "TERMINATED"
        assert (m["oom_retries"], m["oom_batch_size"], m["trained_batch"]) == (retries, fits, fits)
        assert m["oom_eval_batch_size"] == m["eval_batch"] == max(1, EVAL.batch_size >> retries)
        assert math.isfinite(m["wikitext2_ppl"])
    bad = by_fit[0]
    assert bad["status"] == "ERROR" and "out of memory" in bad["error"] and "after 2 batch-size halving(s)" in bad["error"]
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 2


def test_first_feasible_trial_ends_the_sweep_and_keeps_what_finished(ray_local, ref_model_dir, tmp_path):
    """stop="first_feasible", one worker so the order is fixed: the two NaN trials are
    infeasible (and finish as ERROR); the third (the model as it is: FP32's perplexity) is
    feasible at its first report, so the sweep ends there, its job cancelled mid-way,
    the five trials after it never started; the finished results are kept and the
    summary says why."""
    exp = Experiment(name="firstfeasible", model="gpt2-ref", recipe="planted_nan", task=EVAL, plugins=(PLUGIN,),
                     search_space={"nan_at_epoch": tune.grid_search([1, 1, -1, -1, -1, -1, -1, -1])},
                     fixed={"epochs": 3, "epoch_seconds": 0.5}, constraints=["wikitext2_ppl <= 1.0 * fp32"],
                     stop="first_feasible", workers=1, num_samples=1, scheduler="fifo", max_failures=0,
                     wandb_project="sweeper-tests")
    res = run_experiment(exp, results_dir=tmp_path, verbose=0)
    s = res.summary
    assert s["stopped_because"].startswith(f"first_feasible: trial {s['pick']} met every constraint"), s["stopped_because"]
    assert [t["status"] for t in s["trials"]] == ["TERMINATED", "ERROR", "ERROR"]
    assert all("is nan at epoch 1" in t["error"] for t in s["trials"][1:])  # finished before the stop, kept
    (feasible,) = [t for t in s["trials"] if t["feasible"]]
    assert feasible["trial_id"] == s["pick"] and s["feasible_front"] == [s["pick"]]
    assert feasible["metrics"]["epoch"] == 1  # stopped at its first report, not its third
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == 1
    assert "stopped because first_feasible" in res.table
    assert len(_offline_runs_of(res.results_dir)) == 3  # W&B runs of the stopped trial closed too


def _offline_runs_of(run_dir: Path) -> list:
    from sweeper.reports.wandb_offline import read_offline_run

    runs = [read_offline_run(d) for d in sorted((run_dir / "wandb").rglob("offline-run-*")) if d.is_dir()]
    return [r for r in runs if not r["config"].get("sweeper_leaderboard")]
