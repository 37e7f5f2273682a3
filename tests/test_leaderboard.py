"""`sweeper leaderboard` on fake but schema-exact sweeps: a QAT one and an ONNX one.

Each fake sweep is a Ray Tune 2.60 results folder (trial folders with params.json and
result.json, error.txt, experiment_state-*.json, the sweeper's baseline.json) and the
summary JSON that `sweep.build_summary` makes from the same trials.
"""
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeper.reports import leaderboard as lb
from sweeper.cli import main as cli_main
from sweeper.errors import ConfigError
from sweeper.sweep import build_summary
from tests.test_pareto import brute_force

SETTINGS = {"dataset": "wikitext-2-raw-v1", "split": "test", "context_length": 64, "stride": 32,
            "max_tokens": 8192, "dtype": "float32", "join": "\n\n",
            "unit": "perplexity (exp of mean NLL in nats per scored token)"}
# the ONNX task also names its runtime and a longer unit; neither changes the numbers' meaning
ONNX_SETTINGS = {**SETTINGS, "runtime": "onnxruntime 1.32.0 CPUExecutionProvider",
                 "unit": "perplexity (exp of mean NLL in nats per scored token); model_size_mb in MB of 2**20 bytes"}
DATE = "2025-06-01_12-00-00"

QAT = {"name": "gpt2_qat_smoke", "model": "gpt2-ref", "recipe": "aimet_qat", "device": "cpu",
       "baseline": {"wikitext2_ppl": 40.0, "wikitext2_nll": math.log(40.0), "wikitext2_scored_tokens": 8128},
       # (config, [metrics of each report], failure text or None, Tune status)
       "trials": [
           ({"lr": 1e-4, "epochs": 1, "weight_decay": 0.0, "quant_scheme": "tf", "output_bw": 8, "per_channel": True},
            [{"wikitext2_ppl": 48.0, "epoch": 0}, {"wikitext2_ppl": 43.5, "epoch": 1, "train_loss": 3.9}], None, "TERMINATED"),
           ({"lr": 3e-4, "epochs": 1, "weight_decay": 0.01, "quant_scheme": "tf_enhanced", "output_bw": 16, "per_channel": False},
            [{"wikitext2_ppl": 47.0, "epoch": 0}, {"wikitext2_ppl": 41.2, "epoch": 1, "train_loss": 3.7}], None, "TERMINATED"),
           ({"lr": 1e-3, "epochs": 2, "weight_decay": 0.1, "quant_scheme": "percentile", "output_bw": 8, "per_channel": False},
            [{"wikitext2_ppl": 52.0, "epoch": 0}], "FloatingPointError: wikitext2_ppl is nan at epoch 1", "ERROR"),
       ]}
ONNX = {"name": "gpt2_onnx_int4", "model": "gpt2-ref", "recipe": "onnx_weight_only", "device": "cpu",
        "baseline": {"wikitext2_ppl": 40.0, "wikitext2_nll": math.log(40.0), "wikitext2_scored_tokens": 8128,
                     "model_size_mb": 498.0, "latency_ms": 30.0, "eval_seconds": 3.9, "eval_tokens_per_s": 2100.0},
        "trials": [
            # (algorithm, bits, block_size, device, ppl, size, latency)
            *[({"algorithm": a, "bits": b, "block_size": bs, "device": dev},
               [{"wikitext2_ppl": ppl, "model_size_mb": size, "latency_ms": lat, "eval_tokens_per_s": 64000.0 / lat, "epoch": 0}],
               None, "TERMINATED")
              for a, b, bs, dev, ppl, size, lat in [
                  ("rtn", 4, 32, "cpu", 46.0, 150.0, 20.0),
                  ("rtn", 8, 128, "cpu", 40.3, 260.0, 24.0),
                  ("gptq", 4, 128, "cpu", 44.0, 140.0, 21.0),    # dominates rtn/4/32 on size
                  ("gptq", 4, 32, "cuda", 42.5, 155.0, 6.0),
                  ("gptq", 8, 32, "cuda", 40.2, 270.0, 7.5),
                  ("awq", 4, 32, "cuda", 43.0, 160.0, 5.5),
                  ("awq", 8, 128, "cpu", 40.35, 265.0, 26.0),   # dominated by rtn/8/128 on size
              ]],
            ({"algorithm": "awq", "bits": 4, "block_size": 128, "device": "cpu"},
             [{"wikitext2_ppl": float("nan"), "model_size_mb": 141.0, "latency_ms": 19.0, "eval_tokens_per_s": 3368.0, "epoch": 0}],
             None, "TERMINATED"),
            ({"algorithm": "gptq", "bits": 4, "block_size": 64, "device": "cuda"},
             [], "RuntimeError: job failed on cuda-0: CUDA out of memory", "ERROR"),
            # a worker died once, Tune retried the trial and it finished: error.txt stays
            ({"algorithm": "rtn", "bits": 4, "block_size": 64, "device": "cpu"},
             [{"wikitext2_ppl": 45.0, "model_size_mb": 145.0, "latency_ms": 19.5, "eval_tokens_per_s": 3282.0, "epoch": 0}],
             "ray.exceptions.RayActorError: The actor died unexpectedly before finishing this task.", "TERMINATED"),
        ]}


def _ray_result(metrics: dict, trial_id: str, config: dict, it: int, worker: str) -> dict:
    """One result.json line as Ray Tune 2.60 writes it for a function trainable."""
    flat = dict(metrics)
    flat.update({f"eval_settings/{k}": v for k, v in SETTINGS.items()})
    flat.update(worker_id=worker, job_start_overhead_s=0.01)
    return {**flat, "timestamp": 1748779200 + it, "checkpoint_dir_name": f"checkpoint_{it - 1:06d}", "done": False,
            "training_iteration": it, "trial_id": trial_id, "date": DATE, "time_this_iter_s": 1.5,
            "time_total_s": 1.5 * it, "pid": 4242, "hostname": "box", "node_ip": "10.0.0.2", "config": config,
            "time_since_restore": 1.5 * it, "iterations_since_restore": it}


def write_sweep(results: Path, spec: dict, eval_settings: dict | None = None) -> tuple[Path, Path]:
    """Writes the results folder and (as `sweeper run` does by default) its summary.json
    inside it; returns (run_dir, summary_path)."""
    run_dir = results / spec["name"]
    run_dir.mkdir(parents=True)
    (run_dir / "baseline.json").write_text(json.dumps({**spec["baseline"], "eval_settings": eval_settings or SETTINGS}, indent=2))
    grid, trial_data = [], []
    prefix = f"{abs(hash(spec['name'])) % 0xFFFFF:05x}"
    for i, (config, reports, failure, status) in enumerate(spec["trials"]):
        trial_id = f"{prefix}_{i:05d}"
        worker = f"{config.get('device', spec['device'])}-{i % 2}"
        dirname = f"trial_main_{trial_id}_{i + 1}_" + ",".join(f"{k}={v}" for k, v in sorted(config.items()))[:60] + f"_{DATE}"
        d = run_dir / dirname
        d.mkdir()
        (d / "params.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        lines = [_ray_result(m, trial_id, config, it, worker) for it, m in enumerate(reports, 1)]
        (d / "result.json").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
        if failure:
            (d / "error.txt").write_text(f"Failure # 1 (occurred at {DATE})\n\x1b[36mray::ImplicitFunc.train()\x1b[39m "
                                         f"(pid=4242, ip=10.0.0.2)\nTraceback (most recent call last):\n  File \"sweep.py\", "
                                         f"line 99, in trial_main\n{failure}\n")
        last = lines[-1] if lines else {}
        err = None
        if status == "ERROR":  # what ResultGrid gives: the pickled RayTaskError, whose cause is the trial's exception
            err = SimpleNamespace(cause=failure.split(": ", 1)[1])
        grid.append(SimpleNamespace(metrics=dict(last), config=dict(config), error=err, path=str(d), checkpoint=None))
        trial_data.append([json.dumps({"trial_id": trial_id, "status": status, "relative_logdir": dirname,
                                       "trainable_name": "trial_main", "config": config, "experiment_tag": str(i + 1)}),
                           json.dumps({"last_result": last, "error_filename": "error.txt" if failure else None})])
    (run_dir / f"experiment_state-{DATE}.json").write_text(json.dumps(
        {"trial_data": trial_data, "runner_data": {"_metric": "wikitext2_ppl", "_iteration": 9}, "stats": {"start_time": 0}}))
    exp = SimpleNamespace(name=spec["name"], model=spec["model"], recipe=spec["recipe"], device=spec["device"],
                          objective=("wikitext2_ppl", "min"), seed=0, origin={})
    baseline = json.loads((run_dir / "baseline.json").read_text())
    summary = build_summary(exp, grid, baseline, {}, [], {})
    summary["elapsed_s"] = 12.0
    summary_path = run_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return run_dir, summary_path


@pytest.fixture()
def sweeps(tmp_path):
    """The QAT and ONNX sweeps: {"qat": (run_dir, summary), "onnx": (run_dir, summary)}."""
    return {"qat": write_sweep(tmp_path / "results", QAT), "onnx": write_sweep(tmp_path / "results", ONNX, ONNX_SETTINGS)}


def _board(sources, **kw):
    return lb.build_board([r for s in sources for r in lb.load_source(str(s))], **kw)


def test_folders_and_summaries_give_identical_rows(sweeps, capsys):
    folders = [sweeps["qat"][0], sweeps["onnx"][0]]
    summaries = [sweeps["qat"][1], sweeps["onnx"][1]]
    a, b = _board(folders), _board(summaries)
    assert a.columns == b.columns and a.rows == b.rows
    assert len(a.rows) == len(QAT["trials"]) + len(ONNX["trials"])
    # the whole command, every format, gives the same text from either kind of source
    for fmt in lb.FORMATS:
        assert cli_main(["leaderboard", *map(str, folders), "--format", fmt]) == 0
        from_folders = capsys.readouterr().out
        assert cli_main(["leaderboard", *map(str, summaries), "--format", fmt]) == 0
        assert capsys.readouterr().out == from_folders
    # a results root holding both experiments is the same source set
    assert _board([sweeps["qat"][0].parent]).rows == a.rows


def test_rows_ranked_with_deltas_and_failed_trials_last(sweeps):
    board = _board([sweeps["qat"][1], sweeps["onnx"][1]])
    ranked = [r for r in board.rows if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert [r["wikitext2_ppl"] for r in ranked] == sorted(r["wikitext2_ppl"] for r in ranked)
    assert {r["experiment"] for r in ranked} == {"gpt2_qat_smoke", "gpt2_onnx_int4"}
    best = ranked[0]
    assert (best["experiment"], best["algorithm"], best["bits"]) == ("gpt2_onnx_int4", "gptq", 8)
    assert best["Δ wikitext2_ppl"] == pytest.approx(0.2) and best["Δ% wikitext2_ppl"] == pytest.approx(0.5)
    assert best["Δ% model_size_mb"] == pytest.approx(100 * (270 - 498) / 498)
    qat = next(r for r in ranked if r["experiment"] == "gpt2_qat_smoke" and r["lr"] == 3e-4)
    assert qat["wikitext2_ppl"] == 41.2 and qat["model_size_mb"] is None and qat["Δ model_size_mb"] is None
    assert (qat["model"], qat["recipe"], qat["device"]) == ("gpt2-ref", "aimet_qat", "cpu")
    # the varying configuration of both experiments; an ONNX trial's device comes from its config
    assert {"lr", "epochs", "quant_scheme", "algorithm", "bits", "block_size"} <= set(board.columns)
    assert {r["device"] for r in ranked if r["experiment"] == "gpt2_onnx_int4"} == {"cpu", "cuda"}
    tail = board.rows[len(ranked):]
    assert [r["status"] for r in tail] == ["ERROR", "ERROR", "TERMINATED"]  # ERROR first, then the NaN one
    assert all(r["rank"] is None for r in tail) and math.isnan(tail[-1]["wikitext2_ppl"])
    assert {r["error"] for r in tail[:2]} == {"wikitext2_ppl is nan at epoch 1", "job failed on cuda-0: CUDA out of memory"}
    # retried by Tune after a lost worker, then finished: ranked, no error
    retried = next(r for r in ranked if r.get("block_size") == 64)
    assert retried["status"] == "TERMINATED" and retried["error"] is None


def test_folder_alone_reads_tune_files(sweeps, tmp_path):
    # `sweeper run --summary elsewhere.json`: the folder holds no summary; trials come from Tune's files
    moved = [shutil.move(str(s), tmp_path / f"{d.name}.json") for d, s in sweeps.values()]
    a = _board([d for d, _ in sweeps.values()])
    b = _board(moved)
    assert a.columns == b.columns
    for ra, rb in zip(a.rows, b.rows):
        assert ra == {**rb, "model": None, "recipe": None}
    assert (a.metric, a.mode) == ("wikitext2_ppl", "min")


def test_pareto_fronts_match_definition_and_the_plot(sweeps, tmp_path):
    png = tmp_path / "plots" / "front.png"
    assert cli_main(["leaderboard", str(sweeps["qat"][1]), str(sweeps["onnx"][1]), "--plot", str(png)]) == 0
    board = _board([sweeps["qat"][1], sweeps["onnx"][1]])
    assert [c for c, _ in board.fronts] == ["pareto_size", "pareto_latency"]
    for col, cost in board.fronts:
        pts = [r for r in board.rows if r["rank"] is not None and r[cost] is not None]
        expect = {pts[i]["trial_id"] for i in brute_force([(r["wikitext2_ppl"], r[cost]) for r in pts], ("min", "min"))}
        assert {r["trial_id"] for r in board.rows if r.get(col)} == expect
        assert all(r[col] is None for r in board.rows if r["experiment"] == "gpt2_qat_smoke")
    size_front = {(r["algorithm"], r["bits"], r["block_size"]) for r in board.rows if r.get("pareto_size")}
    assert ("gptq", 4, 128) in size_front and ("rtn", 4, 32) not in size_front and ("awq", 8, 128) not in size_front

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[0] > 100
    data = json.loads(Path(str(png) + ".json").read_text())
    assert [(p["x_key"], p["y_key"]) for p in data["panels"]] == [("model_size_mb", "wikitext2_ppl"), ("latency_ms", "wikitext2_ppl")]
    assert data["panels"][0]["x_label"] == "model size (MB)" and data["panels"][1]["x_label"] == "latency (ms)"
    assert data["panels"][0]["y_label"].startswith("WikiText-2 perplexity")
    for panel, (col, cost) in zip(data["panels"], board.fronts):
        front = sorted((r[cost], r["wikitext2_ppl"]) for r in board.rows if r.get(col))
        drawn = panel["series"]["pareto_front"]
        assert list(zip(drawn["x"], drawn["y"])) == front
        trials = panel["series"]["trials"]
        table = {(f"{r['experiment']}/{r['trial_id']}", r[cost], r["wikitext2_ppl"])
                 for r in board.rows if r["rank"] is not None and r[cost] is not None}
        assert set(zip(trials["trials"], trials["x"], trials["y"])) == table


def test_group_by_device_ranks_each_block(sweeps, capsys):
    board = _board([sweeps["onnx"][1]], group_by="device")
    groups = dict((g, rows) for g, rows in board.groups())
    assert set(groups) == {"cpu", "cuda"}
    for rows in groups.values():
        ranked = [r["rank"] for r in rows if r["rank"] is not None]
        assert ranked == list(range(1, len(ranked) + 1))
    assert cli_main(["leaderboard", str(sweeps["onnx"][1]), "--group-by", "device", "--format", "md", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "### device = cpu" in out and "### device = cuda" in out
    # --group-by takes any config key too
    assert {g for g, _ in _board([sweeps["onnx"][1]], group_by="bits").groups()} == {4, 8}


def test_md_html_csv_json_carry_the_settings(sweeps, capsys):
    srcs = [str(sweeps["qat"][1]), str(sweeps["onnx"][1])]
    assert cli_main(["leaderboard", *srcs, "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("**Leaderboard: wikitext2_ppl (min) on ") and "dataset=wikitext-2-raw-v1, split=test, context_length=64, stride=32" in md
    assert md.count("\n| ") == 1 + len(QAT["trials"]) + len(ONNX["trials"])
    assert cli_main(["leaderboard", *srcs, "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert "<caption>wikitext2_ppl (min" in page and "split=test" in page and page.count("<tr>") == 1 + 13
    assert cli_main(["leaderboard", *srcs, "--format", "csv", "--top", "3"]) == 0
    import csv

    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"] and all(r["rank"] == "" for r in rows[3:])
    assert cli_main(["leaderboard", *srcs, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["eval_settings"]["stride"] == 32 and doc["rows"][0]["rank"] == 1


def test_mixed_settings_fail_in_one_line_unless_allowed(tmp_path, capsys):
    qat = write_sweep(tmp_path / "results", QAT)[1]
    onnx = write_sweep(tmp_path / "results", ONNX, {**ONNX_SETTINGS, "context_length": 128, "stride": 64})[1]
    assert cli_main(["leaderboard", str(qat), str(onnx)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "eval_settings.context_length" in err and "--allow-mixed" in err
    with pytest.raises(ConfigError, match="context_length"):
        _board([qat, onnx])
    assert cli_main(["leaderboard", str(qat), str(onnx), "--allow-mixed", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "differing (see columns): context_length, stride" in md
    board = _board([qat, onnx], allow_mixed=True)
    assert {"context_length", "stride"} <= set(board.columns)
    assert {(r["experiment"], r["context_length"]) for r in board.rows} == {("gpt2_qat_smoke", 64), ("gpt2_onnx_int4", 128)}


@pytest.mark.parametrize("argv,needle", [
    (["{tmp}/nope.json"], "no such file or folder"),
    (["{qat}", "--metric", "bleu"], "--metric='bleu'"),
    (["{qat}", "--group-by", "colour"], "--group-by='colour'"),
    (["{qat}", "--top", "0"], "--top=0"),
    (["{qat}", "--plot", "x.svg"], "--plot='x.svg'"),
    (["{qat}", "--plot", "{tmp}/x.png"], "model_size_mb or latency_ms"),
    (["{qat}", "{qat}"], "also in"),
])
def test_bad_input_is_one_line(sweeps, tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, qat=sweeps["qat"][1]) for a in argv]
    assert lb.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err, err


def test_sweep_level_wandb_run_holds_table_and_plot(sweeps, tmp_path, monkeypatch):
    from sweeper.reports.plots import plot_pareto
    from sweeper.reports.wandb_offline import read_offline_run
    from sweeper.reports.wandb_report import log_leaderboard_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    board = _board([sweeps["qat"][1], sweeps["onnx"][1]])
    png = tmp_path / "front.png"
    plot_pareto(board, png)
    run_dir = log_leaderboard_run("sweeper-tests", board.rows, board.columns, png, tmp_path / "wb", "leaderboard")
    assert run_dir and Path(run_dir).name.startswith("offline-run-")
    run = read_offline_run(run_dir)
    assert run["project"] == "sweeper-tests" and run["config"]["sweeper_leaderboard"] is True
    logged = run["history"][0]
    # the offline file keeps nested values flattened: "leaderboard/_type", ...
    assert logged["leaderboard/_type"] == "table-file" and logged["pareto/_type"] == "image-file"
    assert logged["leaderboard/nrows"] == len(board.rows) and run["summary"]["n_trials"] == len(board.rows)
    files = Path(run_dir) / "files"
    table = json.loads((files / logged["leaderboard/path"]).read_text())
    assert table["columns"] == board.columns and len(table["data"]) == len(board.rows)
    for row, logged_row in zip(board.rows, table["data"]):
        for c, v in zip(board.columns, logged_row):
            want = row[c]
            assert v == want or (v is None and isinstance(want, float) and math.isnan(want)), (c, v, want)
    assert (files / logged["pareto/path"]).read_bytes()[:4] == b"\x89PNG"
    # reading the project back skips the sweep-level run: it is not a trial
    with pytest.raises(ConfigError, match="found none"):
        lb.load_source(f"wandb:{tmp_path / 'wb'}")
    # a trial run as Ray's WandbLoggerCallback makes it (group = experiment) is read back as a trial
    import wandb

    from sweeper.reports.wandb_report import wait_until_written

    trial = wandb.init(project="sweeper-tests", group="gpt2_onnx_int4", name="trial_main_0", dir=str(tmp_path / "wb"),
                       mode="offline", config={"algorithm": "rtn", "bits": 4}, reinit="create_new")
    trial.log({"wikitext2_ppl": 45.0, "model_size_mb": 150.0, "worker_id": "cpu-0"})
    trial_dir = Path(trial.dir).parent
    trial.finish()
    assert wait_until_written(trial_dir)
    [rec] = lb.load_source(f"wandb:{tmp_path / 'wb'}")
    assert (rec["experiment"], rec["metric"], rec["mode"]) == ("gpt2_onnx_int4", "wikitext2_ppl", "min")
    assert rec["trials"][0]["config"] == {"algorithm": "rtn", "bits": 4}
    assert rec["trials"][0]["metrics"]["model_size_mb"] == 150.0 and rec["trials"][0]["status"] == "TERMINATED"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_leaderboard_run("sweeper-tests", board.rows, board.columns, png, tmp_path / "wb2", "x") is None


def test_folder_skips_trials_the_sweep_no_longer_holds(sweeps):
    # `sweeper resume --retry-errored`: Tune runs an ERROR trial again as a new trial, and the
    # old trial's folder stays behind with its error.txt; the newest experiment state decides
    run_dir, _ = sweeps["onnx"]
    before = lb.load_results_dir(run_dir)["trials"]
    stale = run_dir / "trial_main_stale_00099_99_algorithm=rtn_2026-01-01"
    stale.mkdir()
    (stale / "params.json").write_text(json.dumps({"algorithm": "rtn", "bits": 4}))
    (stale / "result.json").write_text("")
    (stale / "error.txt").write_text("ConfigError: act_order=('__fn_ph', '745b0f76') is not allowed")
    assert lb.load_results_dir(run_dir)["trials"] == before
