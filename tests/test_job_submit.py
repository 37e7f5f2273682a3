"""`ray job submit` as users run it: a real local head (`ray start --head`, token
authentication), the smoke sweep submitted through the Jobs SDK with the working
directory, its results found on the storage path once the job is over; plus the storage
checks that happen before Ray starts.

Its own module: the head it starts must not share a process with other tests' Ray."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_procs(sid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _stop_session(sid: int) -> None:
    """Stops the head started below: every process of its session (the daemons `ray start`
    left behind keep its session id), SIGTERM first, then SIGKILL; nothing else."""
    import psutil

    procs = _session_procs(sid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=5)
        if not procs:
            return


@pytest.fixture()
def ray_head():
    """A local head as `ray start --head` starts it, with token authentication on, free
    ports and its own temp dir; yields (dashboard address, token); always stopped after."""
    # short: Ray's unix socket paths under the temp dir must fit in 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes
    token_file = temp_dir / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    gcs, dash, client, node_mgr, obj_mgr, agent_http, agent_grpc, env_agent, metrics = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--temp-dir", str(temp_dir),
           "--num-cpus", "2", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--metrics-export-port", str(metrics), "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
        yield f"http://127.0.0.1:{dash}", token
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop_session(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_smoke_sweep_lands_on_storage(ray_head, ref_model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from sweeper.reports.wandb_offline import read_offline_run

    address, token = ray_head
    storage = tmp_path / "storage"
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    job_id = client.submit_job(
        # the README's smoke sweep as it is (4 trials): this test also checks its quality
        entrypoint=f"{sys.executable} experiments/gpt2_qat.py --smoke --storage {storage}",
        # the cache the ref_model_dir fixture built into, so the job trains nothing
        runtime_env={"working_dir": str(REPO), "env_vars": {
            "SWEEPER_DATA_DIR": os.environ["SWEEPER_DATA_DIR"], "SWEEPER_CACHE_DIR": os.environ["SWEEPER_CACHE_DIR"],
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}})
    deadline = time.monotonic() + 420
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]

    run_dir = storage / "gpt2_qat_smoke"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED"] * 4
    assert summary["model"] == "gpt2-ref"  # no hub here
    # the smoke sweep's quality: best W8A8 QAT trial within 5% of FP32, and the search space
    # matters (trials at other settings differ)
    base = summary["baseline"]["wikitext2_ppl"]
    best = summary["trials"][0]["metrics"]["wikitext2_ppl"]
    assert 0 < best <= 1.05 * base, (best, base)
    assert len({round(t["metrics"]["wikitext2_ppl"], 3) for t in summary["trials"]}) > 1
    assert summary["pool"]["stranded"] == 0 and summary["pool"]["free"] == summary["pool"]["workers"]
    assert "workers cpu x2" in logs  # the head's 2 CPUs, as a local run on 2 cores: trials hold none
    assert len(summary["workers"]) == 2
    assert (run_dir / "best_encodings.json").is_file()
    runs = [read_offline_run(d) for d in (run_dir / "wandb").rglob("offline-run-*") if d.is_dir()]
    assert len([r for r in runs if not r["config"].get("sweeper_leaderboard")]) == 4, "W&B offline runs not on the storage"
    assert f"[sweeper] results: {run_dir}" in logs
    # the quiet console: plan, progress, baseline, table and where things are; the rest in logs/
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    print(f"job console: {len(lines)} lines")
    assert len(lines) <= 60, "\n".join(lines)
    assert (run_dir / "report.html").is_file() and f"[sweeper] report page: {run_dir / 'report.html'}" in logs
    assert "[sweeper] trials 4/4 ended (4 done, 0 failed)" in logs
    assert "aimet_qat: epoch" not in logs  # workers' per-job lines
    worker_logs = list((run_dir / "logs").glob("cpu-*.log"))
    assert any("aimet_qat: epoch" in f.read_text() for f in worker_logs)


def test_bad_storage_is_one_line_before_ray_starts(capsys, monkeypatch, tmp_path):
    import ray

    from sweeper.cli import main

    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("")
    for bad in ("nosuch://x", "a_file/results"):  # an unknown scheme; a relative folder that can't be made
        rc = main(["run", str(REPO / "experiments" / "gpt2_qat.py"), "--smoke", "--storage", bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "--storage" in err and bad in err, err
        assert not ray.is_initialized()


def test_storage_default_under_a_ray_job_is_never_the_working_dir(monkeypatch, tmp_path):
    from sweeper.errors import ConfigError
    from sweeper.storage import open_store

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert open_store(None, "exp").uri == str(tmp_path / "results" / "exp")  # a local run: ./results
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "x"}}))
    assert open_store(None, "exp").uri == str(tmp_path / "home" / "sweeper-results" / "exp")
    with pytest.raises(ConfigError, match="absolute path or a URI"):
        open_store("results", "exp")
