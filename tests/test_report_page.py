"""The report page (`results/<exp>/report.html`, `sweeper report`), opened in a real
headless Chromium: one row per trial, every image loaded, no console errors, the failed
trials with their reasons; a screenshot kept in test-artifacts/. Sweeps of the real engine
check the page in test_sweep and test_onnx_sweep; here, `sweeper report` on the schema-exact
sweeps of test_leaderboard."""
import json

from sweeper.cli import main as cli_main
from tests.test_leaderboard import sweeps  # noqa: F401 - the fixture


def test_report_of_two_sweeps_renders_in_a_browser(sweeps, browser, tmp_path, capsys):  # noqa: F811
    qat_dir, onnx_dir = sweeps["qat"][0], sweeps["onnx"][0]
    out = tmp_path / "both.html"
    assert cli_main(["report", str(qat_dir), str(onnx_dir), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = browser.render(out, "report_two_sweeps")
    n_trials = sum(len(json.loads((d / "summary.json").read_text())["trials"]) for d in (qat_dir, onnx_dir))
    assert page.trial_rows == n_trials and page.baseline_rows == 2
    # the leaderboard's Pareto plot, the ONNX sweep's, the QAT sweep's curves per epoch
    alts = [i["alt"] for i in page.images]
    assert len(page.images) == 3, alts
    assert {"Pareto plot of leaderboard", "Pareto plot of gpt2_onnx_int4", "gpt2_qat_smoke metric per epoch"} == set(alts)
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in page.images), page.images
    assert page.console_errors == []
    assert "Leaderboard" in page.text and "Failed trials (1)" in page.text
    assert "wikitext2_ppl is nan at epoch 1" in page.text  # the reason, as the summary keeps it
    assert page.screenshot.stat().st_size > 10_000


def test_report_of_one_folder_lands_beside_it_and_is_self_contained(sweeps, capsys):  # noqa: F811
    run_dir = sweeps["onnx"][0]
    assert cli_main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    # no fetch of anything: images inline, no script, no external link or stylesheet
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 1
    assert "onnxruntime 1.32.0 CPUExecutionProvider" in html  # the evaluation settings


def test_report_of_a_remote_or_missing_source_is_one_line(capsys, tmp_path):
    for bad in ("s3://bucket/results/x", str(tmp_path / "nothing")):
        assert cli_main(["report", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad in err, err


def test_an_experiments_own_table_joins_the_page(sweeps, tmp_path):  # noqa: F811
    from sweeper.reports.report_page import add_table_to_report

    run_dir, summary_path = sweeps["qat"]
    summary = json.loads(summary_path.read_text())
    summary["results"] = str(run_dir)  # what write_results records
    summary_path.write_text(json.dumps(summary))
    elsewhere = tmp_path / "copy.summary.json"  # an experiment's --summary copy
    elsewhere.write_text(json.dumps(summary))
    rows = [{"row": "FP32", "acc": 91.5}, {"row": "INT8", "acc": 91.0}]
    for acc in (90.0, 91.0):  # a second call replaces the table of the same title
        rows[1]["acc"] = acc
        page = add_table_to_report(elsewhere, "Seed-shaped table", rows, ["row", "acc"], note="dev %")
    assert page == run_dir / "report.html"
    html = page.read_text()
    assert html.count("Seed-shaped table") == 1 and "<td class=\"num\">91</td>" in html and "dev %" in html
    for f in (summary_path, elsewhere):
        assert [t["title"] for t in json.loads(f.read_text())["tables"]] == ["Seed-shaped table"]
