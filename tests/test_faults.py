"""Faults during a sweep: a worker killed mid-trial, a driver killed and resumed, a NaN
trial, and a planted secret that must appear in no output."""
import json
import math
import os
import signal
import subprocess
import sys
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
                     workers=2, scheduler="fifo", max_failures=2, wandb_project="sweeper-tests")
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


def test_nan_trial_fails_alone_with_its_reason(ray_local, ref_model_dir, tmp_path, capfd, monkeypatch):
    secret = "sk-planted-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)  # W&B stays offline (WANDB_MODE=offline)
    exp = Experiment(name="nantrial", model="gpt2-ref", recipe="planted_nan", task=EVAL, plugins=(PLUGIN,),
                     search_space={"nan_at_epoch": tune.grid_search([-1, 2, -1])}, fixed={"epochs": 3},
                     workers=2, scheduler="fifo", max_failures=2, wandb_project="sweeper-tests")
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
    assert "ERROR" in res.table and "wikitext2_ppl is nan" in res.table
    # the secret appears in no output: console, summary, Tune's files, W&B offline runs
    out, err = capfd.readouterr()
    assert secret not in out + err
    leaked = [p for p in Path(tmp_path).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


EXPERIMENT_FILE = '''
from ray import tune
from sweeper.experiment import Experiment
from sweeper.tasks import WikiText2PPL

def experiment(smoke=False):
    return Experiment(name="crash", model="gpt2-ref", recipe="planted_nan",
                      task=WikiText2PPL(max_tokens=2048, context_length=128, stride=64),
                      plugins=({plugin!r},), search_space={{"epochs": tune.grid_search([1, 6, 6, 6])}},
                      fixed={{"epoch_seconds": 1.5}}, workers=1, scheduler="fifo", wandb_project="sweeper-tests")
'''


def _finished_trials(run_dir: Path) -> list[str]:
    states = sorted(run_dir.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        state = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return []
    done = []
    for trial_json, _ in state.get("trial_data", []):
        trial = json.loads(trial_json)
        if trial.get("status") == "TERMINATED":
            done.append(trial["trial_id"])
    return done


def test_driver_killed_after_first_trial_then_resumed(ref_model_dir, tmp_path):
    exp_file = tmp_path / "crash_exp.py"
    exp_file.write_text(EXPERIMENT_FILE.format(plugin=PLUGIN))
    results = tmp_path / "results"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sweeper.cli", "run", str(exp_file), "--results-dir", str(results)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = results / "crash"
    deadline = time.monotonic() + 240
    try:
        while not _finished_trials(run_dir):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "first trial never finished"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    first_done = _finished_trials(run_dir)
    assert len(first_done) == 1
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)

    summary = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "resume", str(run_dir), str(exp_file),
                        "--summary", str(summary)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert sorted(t["config"]["epochs"] for t in s["trials"]) == [1, 6, 6, 6]
    assert all(t["status"] == "TERMINATED" for t in s["trials"])
    attempts = {t["trial_id"]: t["attempts"] for t in s["trials"]}
    assert attempts[first_done[0]] == 0  # kept from before the crash, not rerun
    assert sorted(attempts.values()) == [0, 1, 1, 1]
