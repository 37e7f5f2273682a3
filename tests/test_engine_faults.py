"""The engine under faults, on a tiny model and cheap plugin recipes: worker processes
killed at random moments (mid-job and right after a job ends), a job hanging in native
code, and a report blocked longer than the heartbeat. Every sweep must end, keep every
finished result, and give every worker back."""
import json
import random
import threading
import time
from pathlib import Path

import pytest
from ray import tune

from sweeper.experiment import Experiment
from sweeper.registry import import_plugin
from sweeper.sweep import WORKER_JOB_LOGS, run_experiment

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "tests" / "plugins" / "engine_faults.py")
# the same module the workers import (a second import would register other classes)
faults = import_plugin(PLUGIN)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from sweeper.sweep import init_ray

    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")  # these sweeps test the engine, not tracking
    init_ray("sweeper-engine-faults")
    yield
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, data_dir):
    """A randomly initialised 1-layer GPT-2 and a 300-token BPE tokenizer, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sweeper.data import load_wikitext
    from sweeper.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(load_wikitext("wikitext-2-v1", "validation").text[:20_000], 300)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _experiment(name: str, model_dir: Path, workers: int = 2, **kw) -> Experiment:
    return Experiment(name=name, model=str(model_dir), recipe="paced", task=faults.TinyScore(), plugins=(PLUGIN,),
                      workers=workers, num_samples=1, scheduler="fifo", wandb_project="sweeper-tests", **kw)


def test_time_limits_are_checked_and_derived_from_the_task(tiny_model_dir):
    from sweeper.errors import ConfigError
    from sweeper.tasks import WikiText2PPL

    for field, value in (("job_timeout_s", 0), ("job_timeout_s", "1h"), ("heartbeat_timeout_s", 0.1)):
        with pytest.raises(ConfigError, match=field):
            _experiment("limits", tiny_model_dir, **{field: value}).validate()
    short, full = (Experiment(name="p", model=str(tiny_model_dir), recipe="paced", task=WikiText2PPL(max_tokens=m),
                              plugins=(PLUGIN,), fixed={"epochs": 3}) for m in (2048, None))
    # more tokens to evaluate, or more reports, allow more time; an explicit limit wins
    assert 900 < short.job_time_limit_s < full.job_time_limit_s
    assert Experiment(**{**short.__dict__, "fixed": {"epochs": 6}}).job_time_limit_s > short.job_time_limit_s
    assert Experiment(**{**short.__dict__, "job_timeout_s": 42.0}).job_time_limit_s == 42.0
    assert short.baseline_time_limit_s >= 900 + 2 * WikiText2PPL(max_tokens=2048).eval_budget_s()


def _job_log(run_dir: Path) -> list[dict]:
    """Every worker's job-log lines, oldest first."""
    lines = [json.loads(ln) for f in (run_dir / WORKER_JOB_LOGS).glob("*.jsonl") for ln in f.read_text().splitlines()]
    return sorted(lines, key=lambda ln: ln["time"])


def _reruns_of_finished(log: list[dict]) -> list[str]:
    """Trials a job started for after one of their jobs had finished (DONE)."""
    done, reruns = set(), []
    for ln in log:
        if not ln["trial_id"]:
            continue
        if ln["event"] == "START" and ln["trial_id"] in done:
            reruns.append(ln["trial_id"])
        elif ln["event"] == "DONE":
            done.add(ln["trial_id"])
    return reruns


def _assert_pool_whole(summary: dict) -> None:
    pool = summary["pool"]
    assert pool["stranded"] == 0
    assert pool["free"] == pool["workers"] and pool["leased"] == 0 and pool["recovering"] == 0


def _workers(prefix: str) -> dict:
    """{actor name: handle} of the device workers of the sweep whose namespace starts with `prefix`."""
    import ray
    from ray.util import list_named_actors

    return {a["name"]: ray.get_actor(a["name"], namespace=a["namespace"])
            for a in list_named_actors(all_namespaces=True)
            if a["name"].startswith("sweeper-worker-") and a["namespace"].startswith(prefix)}


def _info(handle, timeout_s: float = 0.5) -> dict | None:
    """The worker's info, or None when it does not answer within `timeout_s` (restarting)."""
    import ray

    try:
        return ray.get(handle.info.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001
        return None


class Chaos:
    """Kills worker processes of one sweep at seeded random moments, alternating between
    mid-job (a random delay into a running trial job) and right after a job ends (the
    first sight of a worker's finished-job count going up)."""

    def __init__(self, prefix: str, seed: int, kills: int):
        self.prefix, self.rng, self.target = prefix, random.Random(seed), kills
        self.kills: list[tuple[str, str]] = []  # (moment, worker)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import ray

        trials_started = False
        while not self.stop.is_set() and len(self.kills) < self.target:
            workers = _workers(self.prefix)
            infos = {n: i for n, i in ((n, _info(h)) for n, h in workers.items()) if i is not None}
            # the baseline is not retried: start once trial jobs run (a worker's second job)
            trials_started = trials_started or any(i["counters"]["jobs_started"] >= 2 for i in infos.values())
            if not trials_started or not infos:
                time.sleep(0.05)
                continue
            moment = "mid-job" if len(self.kills) % 2 == 0 else "after-job"
            victim = self._mid_job(infos) if moment == "mid-job" else self._after_job(workers, infos)
            if victim is not None:
                ray.kill(workers[victim], no_restart=False)
                self.kills.append((moment, victim))
                time.sleep(self.rng.uniform(0.05, 0.3))

    def _mid_job(self, infos: dict) -> str | None:
        busy = sorted(n for n, i in infos.items()
                      if sum(i["counters"][k] for k in ("jobs_done", "jobs_failed", "jobs_cancelled")) < i["counters"]["jobs_started"])
        if not busy:
            time.sleep(0.02)
            return None
        time.sleep(self.rng.uniform(0.05, 0.4))
        return self.rng.choice(busy)

    def _after_job(self, workers: dict, infos: dict) -> str | None:
        before = {n: (i["pid"], i["counters"]["jobs_done"]) for n, i in infos.items()}
        deadline = time.monotonic() + 10
        while not self.stop.is_set() and time.monotonic() < deadline:
            for n in before:
                i = _info(workers[n], 0.2)
                if i is not None and i["pid"] == before[n][0] and i["counters"]["jobs_done"] > before[n][1]:
                    return n
            time.sleep(0.005)
        return None


def test_chaos_kills_lose_no_finished_trial(ray_local, tiny_model_dir, tmp_path):
    exp = _experiment("chaos", tiny_model_dir, search_space={"index": tune.grid_search(list(range(16)))},
                      fixed={"epochs": 2, "epoch_seconds": 0.25}, max_failures=10, heartbeat_timeout_s=5.0)
    chaos = Chaos("sweeper-chaos-", seed=14, kills=6)
    chaos.thread.start()
    try:
        res = run_experiment(exp, results_dir=tmp_path, verbose=0)
    finally:
        chaos.stop.set()
        chaos.thread.join(timeout=30)
    s = res.summary
    moments = [m for m, _ in chaos.kills]
    print(f"chaos: {len(chaos.kills)} kills ({moments.count('mid-job')} mid-job, {moments.count('after-job')} "
          f"right after a job), attempts {sorted(t['attempts'] for t in s['trials'])}, pool {s['pool']}")
    assert len(chaos.kills) >= 6 and moments.count("after-job") >= 2
    assert len(s["trials"]) == 16 and all(t["status"] == "TERMINATED" for t in s["trials"])
    assert all(t["metrics"]["epoch"] == 2 for t in s["trials"])
    log = _job_log(res.results_dir)
    # DONE is logged once the job's end is with the pool; a kill just after can cut the line
    # (then the trial finishes from the pool's copy), never make a finished trial run again
    finished = {ln["trial_id"] for ln in log if ln["event"] == "DONE" and ln["trial_id"]}
    assert finished <= {t["trial_id"] for t in s["trials"]} and len(finished) >= 16 - len(chaos.kills)
    assert _reruns_of_finished(log) == []
    starts = {t["trial_id"]: sum(ln["event"] == "START" and ln["trial_id"] == t["trial_id"] for ln in log) for t in s["trials"]}
    assert all(starts[t["trial_id"]] == t["attempts"] for t in s["trials"])
    print(f"chaos: {len(finished)} trials logged DONE, {16 - len(finished)} finished from the pool's copy; "
          f"jobs started {sum(starts.values())} for 16 trials")
    # the kills hit jobs: some trial needed a second job, and the pool saw lost jobs
    assert max(t["attempts"] for t in s["trials"]) >= 2 and s["pool"]["lost_jobs"] >= 1
    _assert_pool_whole(s)


class SlowCheckpoint(tune.Callback):
    """Holds Tune's driver loop for `seconds` at the first checkpoint, so the trial's
    tune.report with that checkpoint blocks that long (a slow upload, a stuck W&B call)."""

    def __init__(self, seconds: float):
        self.seconds, self.done = seconds, False

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.done:
            self.done = True
            time.sleep(self.seconds)


@pytest.fixture(scope="module")
def hang_sweep(ray_local, tiny_model_dir, tmp_path_factory):
    """One sweep for two faults (a sweep's start costs more than either): the last of three
    trials hangs in native code; the first report with a checkpoint blocks for 2.5
    heartbeats. One worker, warmed by the baseline (whose own limit is the task's): a cold
    worker's first job imports transformers and loads the model, which a loaded 2-core
    machine stretches past any short limit, and the limit is for all of a trial's jobs."""
    exp = _experiment("hang", tiny_model_dir, search_space={"hang_at_epoch": tune.grid_search([-1, -1, 1])},
                      fixed={"epochs": 2, "epoch_seconds": 0.1}, job_timeout_s=8.0, heartbeat_timeout_s=2.0,
                      max_failures=0, workers=1)
    return run_experiment(exp, results_dir=tmp_path_factory.mktemp("hang"), verbose=0, callbacks=[SlowCheckpoint(5.0)])


def test_native_hang_is_killed_at_its_time_limit(hang_sweep):
    s = hang_sweep.summary
    by_status = {}
    for t in s["trials"]:
        by_status.setdefault(t["status"], []).append(t)
    assert len(by_status["TERMINATED"]) == 2 and len(by_status["ERROR"]) == 1
    hung = by_status["ERROR"][0]
    assert hung["config"]["hang_at_epoch"] == 1
    assert "timed out after 8 s" in hung["error"]
    assert s["pool"]["timeouts"] == 1 and s["pool"]["kills"] == 1
    (kill,) = s["pool"]["kill_log"]
    assert kill["trial_id"] == hung["trial_id"] and kill["overrun_s"] >= 0
    print(f"hang: killed {kill['overrun_s']:.2f} s past its 8 s limit; error: {hung['error']}")
    # the worker is back: every worker answers and is free; the hung job never ended on its own
    assert all("error" not in w for w in s["workers"].values())
    log = _job_log(hang_sweep.results_dir)
    hang_starts = [ln for ln in log if ln["event"] == "START" and ln["trial_id"] == hung["trial_id"]]
    assert len(hang_starts) == 1
    assert not any(ln["event"] != "START" and ln["job_id"] == hang_starts[0]["job_id"] for ln in log)
    _assert_pool_whole(s)


def test_slow_checkpoint_write_does_not_cancel_the_job(hang_sweep):
    s = hang_sweep.summary
    done = [t for t in s["trials"] if t["config"]["hang_at_epoch"] == -1]
    assert all(t["status"] == "TERMINATED" and t["metrics"]["epoch"] == 2 and t["attempts"] == 1 for t in done)
    assert sum(c["jobs_cancelled"] for c in s["workers"].values()) == 0
    assert [k["trial_id"] for k in s["pool"]["kill_log"]] == [t["trial_id"] for t in s["trials"] if t["status"] == "ERROR"]
