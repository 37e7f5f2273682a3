"""The quiet console's pieces: the progress line and where library output goes."""
import warnings


def test_progress_line_counts_and_estimate():
    from sweeper.reports.progress import format_duration, status_line

    assert format_duration(42) == "42s" and format_duration(185) == "3m05s" and format_duration(3720) == "1h02m"
    line = status_line(8, 2, 2, 1, 27.123, "wikitext2_ppl", 90.0)
    assert line == ("[sweeper] trials 3/8 ended (2 done, 1 failed), 2 running | best wikitext2_ppl 27.12 | "
                    "1m30s elapsed, ~2m30s left")  # 30 s per ended trial, 5 left
    assert "left" not in status_line(4, 0, 2, 0, None, "m", 10.0)  # no estimate before a trial ends


def test_quiet_console_sends_warnings_to_the_log_and_restores(tmp_path):
    import os

    from sweeper.reports.console import QUIET_ENV, log_file, quiet_console

    before = warnings.showwarning
    with quiet_console(tmp_path / "logs", quiet=True):
        warnings.warn("a library's deprecation notice", DeprecationWarning, stacklevel=1)
        assert os.environ[QUIET_ENV] == "quiet" and log_file("cpu-0.log") == tmp_path.resolve() / "logs" / "cpu-0.log"
    assert "a library's deprecation notice" in (tmp_path / "logs" / "driver.log").read_text()
    assert warnings.showwarning is before and QUIET_ENV not in os.environ and log_file("x.log") is None


def test_progress_best_is_the_best_latest_value(capsys):
    """The best shown is among each trial's latest report, as the summary ranks trials (a
    trial whose epoch 1 was better than its last epoch does not stay 'best')."""
    from types import SimpleNamespace

    from sweeper.reports.progress import ProgressView

    view = ProgressView(2, "ppl", "min")
    a, b = SimpleNamespace(trial_id="a", status="RUNNING"), SimpleNamespace(trial_id="b", status="RUNNING")
    view.on_trial_start(0, [a, b], a)
    view.on_trial_start(0, [a, b], b)
    view.on_trial_result(0, [a, b], a, {"ppl": 10.0})
    view.on_trial_result(0, [a, b], b, {"ppl": 12.0})
    view.on_trial_result(0, [a, b], a, {"ppl": 15.0})  # a got worse at its last epoch
    view.on_trial_complete(0, [a, b], a)
    assert view.best == 12.0
    assert "trials 1/2 ended (1 done, 0 failed), 1 running | best ppl 12" in capsys.readouterr().out
