"""Bad input is refused when the experiment is built, with one line naming the field and
the value, before any Ray work starts."""
import subprocess
import sys
from pathlib import Path

import pytest
from ray import tune

from sweeper.errors import ConfigError, DataNotFoundError
from sweeper.experiment import Experiment
from sweeper.tasks import WikiText2PPL


def _exp(**kw):
    base = dict(name="t", model="gpt2-ref", recipe="aimet_qat", task=WikiText2PPL(max_tokens=1000),
                search_space={"lr": tune.loguniform(1e-5, 1e-3)}, fixed={})
    base.update(kw)
    return Experiment(**base)


BAD = [
    ({"recipe": "aimet_qta"}, "name='aimet_qta'"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"num_samples": 0}, "num_samples=0"),
    ({"workers": 0}, "workers=0"),
    ({"scheduler": "hyperband"}, "scheduler='hyperband'"),
    ({"grace_period": 0}, "grace_period=0"),
    ({"max_failures": -1}, "max_failures=-1"),
    ({"name": "has space"}, "name='has space'"),
    ({"model": ""}, "model=''"),
    ({"model": "./no/such/model"}, "model='./no/such/model'"),
    ({"model": "acme/no-such-model"}, "model='acme/no-such-model'"),
    ({"model": "zoo:gpt9-ref"}, "model='zoo:gpt9-ref'"),
    ({"model": "tests"}, "model='tests'"),
    ({"mode": "up"}, "mode='up'"),
    ({"metric": "accuracy"}, "metric='accuracy'"),
    ({"trust_remote_code": "yes"}, "trust_remote_code='yes'"),
    ({"search_space": {"learning_rate": tune.uniform(0, 1)}}, "learning_rate="),
    ({"search_space": {"lr": tune.loguniform(1e-5, 2.0)}}, "lr=2.0"),
    ({"search_space": {"output_bw": tune.choice([8, 3])}}, "output_bw=3"),
    ({"search_space": {"param_bw": tune.randint(4, 33)}}, "param_bw=32"),
    ({"search_space": {"quant_scheme": tune.choice(["tf", "minmax"])}}, "quant_scheme='minmax'"),
    ({"search_space": {"epochs": tune.grid_search([1, -1])}}, "epochs=-1"),
    ({"search_space": {"per_channel": tune.choice([True, "no"])}}, "per_channel='no'"),
    ({"search_space": {"weight_decay": tune.uniform(0.0, 5.0)}}, "weight_decay=5.0"),
    ({"search_space": {"lr": {"grid_search": []}}}, "lr=[]"),
    ({"fixed": {"batch_size": 0}}, "batch_size=0"),
    ({"fixed": {"bogus": 1}}, "bogus="),
    ({"search_space": [("lr", 1e-3)]}, "search_space="),
    ({"plugins": ("no_such_module_xyz",)}, "plugins='no_such_module_xyz'"),
    ({"plugins": "my_recipes.py"}, "plugins='my_recipes.py'"),
]


@pytest.mark.parametrize("kwargs,expected", BAD, ids=[e for _, e in BAD])
def test_bad_experiment_field_is_one_line_naming_it(kwargs, expected):
    with pytest.raises(ConfigError) as err:
        _exp(**kwargs).validate()
    msg = str(err.value)
    assert expected in msg and "allowed" in msg and "\n" not in msg
    import ray

    assert not ray.is_initialized()


BAD_TASK = [
    ({"split": "dev"}, "split='dev'"), ({"stride": 0}, "stride=0"), ({"dataset": "wikitext-103"}, "dataset="),
    ({"max_tokens": 1}, "max_tokens=1"), ({"batch_size": 0}, "batch_size=0"),
]


@pytest.mark.parametrize("kwargs,expected", BAD_TASK, ids=[e for _, e in BAD_TASK])
def test_bad_task_field(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        WikiText2PPL(**kwargs)


def test_missing_data_is_refused_before_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="SWEEPER_DATA_DIR"):
        _exp().validate()
    import ray

    assert not ray.is_initialized()


def test_good_experiment_validates():
    exp = _exp(search_space={"lr": tune.loguniform(1e-5, 1e-3), "output_bw": tune.choice([8, 16]),
                             "quant_scheme": tune.choice(["range_learning_tf", "tf", "tf_enhanced", "percentile"])})
    assert exp.validate() is exp
    assert exp.objective == ("wikitext2_ppl", "min")


REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sweeper.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_experiment_file_without_experiment(tmp_path):
    f = tmp_path / "empty.py"
    f.write_text("x = 1\n")
    r = _cli("run", str(f))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "EXPERIMENT_FILE" in r.stderr and "def experiment" in r.stderr


@pytest.mark.parametrize("source, line, error", [
    ("from sweeper.experiment import Experiment\n\ndef experiment(smoke=False)\n    pass\n", 3, "SyntaxError"),
    ("import json\nCONFIG = json.loads('{not json')\n", 2, "JSONDecodeError"),
])
def test_experiment_file_that_fails_to_import_is_one_line(tmp_path, source, line, error):
    f = tmp_path / "broken.py"
    f.write_text(source)
    r = _cli("run", str(f))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert f"{f}:{line}: {error}" in r.stderr and "--verbose" in r.stderr
    r = _cli("run", str(f), "--verbose")  # the traceback, for whoever asks
    assert "Traceback (most recent call last)" in r.stderr and error in r.stderr


def test_cli_bad_flag_value(tmp_path):
    r = _cli("run", "experiments/gpt2_qat.py", "--num-samples", "-1")
    assert r.returncode == 2 and "--num-samples=-1" in r.stderr
    # 0 samples is a flag value the CLI takes (only the file's fixed trials); an experiment
    # without fixed trials refuses it, in one line, before Ray starts
    r = _cli("run", "experiments/gpt2_qat.py", "--num-samples", "0")
    assert r.returncode == 2 and "num_samples=0" in r.stderr and r.stderr.strip().count("\n") == 0


def test_cli_unknown_zoo_model():
    r = _cli("zoo", "build", "gpt5-ref")
    assert r.returncode == 2 and "NAME='gpt5-ref'" in r.stderr and "gpt2-ref" in r.stderr


def test_retry_errored_needs_resume(tmp_path):
    from sweeper.sweep import run_experiment

    with pytest.raises(ConfigError, match="retry_errored"):
        run_experiment(_exp(), results_dir=tmp_path, retry_errored=True)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_rerun_experiment_is_the_recorded_trial_only(tmp_path):
    """`sweeper rerun` builds the sweep's experiment again from the record (same file and
    overrides), with the recorded config as its one fixed trial, stopped where the original
    stopped (a trial ASHA ended after 2 reports is rerun for 2 reports, not its last epoch)."""
    from sweeper.rerun import experiment_of, load_record

    config = {"lr": 1e-4, "epochs": 2, "weight_decay": 0.0, "quant_scheme": "tf", "output_bw": 8, "per_channel": False}
    record = {"trial_id": "abc_00003", "experiment": "gpt2_qat_smoke", "config": config,
              "metrics": {"wikitext2_ppl": 30.0, "training_iteration": 2},
              "origin": {"experiment_file": str(REPO / "experiments" / "gpt2_qat.py"),
                         "overrides": {"smoke": True, "workers": 1}}}
    exp = experiment_of(record)
    assert exp.trials == [config] and exp.num_samples == 0 and exp.seeds == 1 and exp.scheduler == "fifo"
    assert exp.stop_after_reports == 2 and exp.workers == 1 and exp.name == "gpt2_qat_smoke_rerun_abc_00003"
    assert exp.fixed["steps_per_epoch"] == 12  # the smoke's fixed fields, from the same file
    with pytest.raises(ConfigError, match="TRIAL_ID"):
        load_record(tmp_path, "nope")
    with pytest.raises(ConfigError, match="experiment_file"):
        experiment_of({**record, "origin": {"experiment_file": str(tmp_path / "gone.py")}})


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.py")), ids=lambda p: p.stem)
def test_every_experiment_file_validates_full_and_smoke(path):
    """An experiment file's mistakes surface here, not minutes into a user's run."""
    from sweeper.cli import load_experiment_file
    from sweeper.models.tf_runtime import TFUnavailable

    make = load_experiment_file(path)
    for smoke in (True, False):
        try:
            exp = make(smoke=smoke).validate()
        except TFUnavailable as exc:  # without the tf extra (CI installs it)
            pytest.skip(str(exc))
        assert exp.name and (exp.trials or exp.num_samples)
