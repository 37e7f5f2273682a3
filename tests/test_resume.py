"""A driver killed after the first trial finished, then the sweep resumed from its
storage URI (file://): finished trials are kept, the rest run (their sample_from values
resolved), nothing is lost, and the
leaderboard reads the sweep from the same URI.

Its own module: the test kills whole Ray clusters and must not share one with others."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "tests" / "plugins" / "fault_recipes.py")


EXPERIMENT_FILE = '''
from ray import tune
from sweeper.experiment import Experiment
from sweeper.tasks import WikiText2PPL

def experiment(smoke=False):
    return Experiment(name="crash", model="gpt2-ref", recipe="planted_nan",
                      task=WikiText2PPL(max_tokens=2048, context_length=128, stride=64),
                      plugins=({plugin!r},), search_space={{"epochs": tune.grid_search([1, 2, 2, 2]),
                                    "epoch_seconds": tune.sample_from(lambda spec: 1.5)}},
                      workers=1, num_samples=1, scheduler="fifo", wandb_project="sweeper-tests")
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


def _kill_session(sid: int) -> None:
    """Kills every process of session `sid`: the driver started below and the local Ray
    it spawned (its GCS, raylet and workers), and nothing else on the machine."""
    import psutil

    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                procs.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_driver_killed_after_first_trial_then_resumed(ref_model_dir, tmp_path):
    exp_file = tmp_path / "crash_exp.py"
    exp_file.write_text(EXPERIMENT_FILE.format(plugin=PLUGIN))
    results = tmp_path / "results"
    storage = results.as_uri()  # file:///...: the same code path as s3:// or gs://
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sweeper.cli", "run", str(exp_file), "--storage", storage]
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
        _kill_session(proc.pid)  # what a crashed head leaves behind, started by this test only
    first_done = _finished_trials(run_dir)
    assert len(first_done) == 1

    summary = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "sweeper.cli", "resume", f"{storage}/crash", str(exp_file),
                        "--summary", str(summary)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert sorted(t["config"]["epochs"] for t in s["trials"]) == [1, 2, 2, 2]
    # trials made after the resume resolve their sample_from values too
    assert [t["config"]["epoch_seconds"] for t in s["trials"]] == [1.5] * 4, [t["config"] for t in s["trials"]]
    assert all(t["status"] == "TERMINATED" for t in s["trials"])
    attempts = {t["trial_id"]: t["attempts"] for t in s["trials"]}
    assert attempts[first_done[0]] == 0  # kept from before the crash, not rerun
    assert sorted(attempts.values()) == [0, 1, 1, 1]
    assert json.loads((run_dir / "summary.json").read_text())["trials"] == s["trials"]  # on the storage too
    # a URI storage is shared: the reference model is put there for other nodes' workers
    assert list((results / "zoo").glob("gpt2-ref-*/COMPLETE"))

    board = subprocess.run([sys.executable, "-m", "sweeper.cli", "leaderboard", f"{storage}/crash", "--format", "json"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert board.returncode == 0, board.stderr[-2000:]
    rows = json.loads(board.stdout)["rows"]
    assert sorted(r["trial_id"] for r in rows) == sorted(t["trial_id"] for t in s["trials"])
