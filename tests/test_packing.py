"""workers_per_device="auto": the level logic on constructed measurements, and the probe as
start_sweep runs it (pack_gpu_kinds), for real, on a local Ray that declares two GPUs (the
jobs run on its CPUs). The sweep at the chosen count is measured on GPUs by
benchmarks/gpu_packing.py (`--configs 1xauto`)."""
import json
from pathlib import Path

import pytest

from sweeper import packing
from sweeper.packing import PackingLevel, best_level, first_trial_config, memory_limit, next_level

PLUGIN = str(Path(__file__).resolve().parent / "plugins" / "fault_recipes.py")


def lv(workers, jph, **kw):
    return PackingLevel(workers, jobs=2 * workers, seconds=1.0, jobs_per_hour=jph, **kw)


def test_levels_double_while_they_gain_and_memory_allows():
    first = lv(1, 1000, peak_mb=9_000, used_mb=10_000, total_mb=80_000)
    assert memory_limit(first) == 7  # 0.9 * 80 GB / 10 GB
    assert next_level([first]) == 2
    assert next_level([first, lv(2, 1600)]) == 4
    assert next_level([first, lv(2, 1600), lv(4, 2000)]) == 7  # memory's limit, not 8
    assert next_level([first, lv(2, 1600), lv(4, 2000), lv(7, 2100)]) is None  # at the limit
    assert next_level([first, lv(2, 1040)]) is None  # gained under 5%
    assert next_level([first, lv(2, 0, error="out of memory at 2 workers")]) is None
    assert next_level([lv(1, 1000, used_mb=50_000, total_mb=80_000)]) is None  # one fits, two don't
    assert next_level([lv(1, 1000)], max_workers=1) is None
    assert memory_limit(lv(1, 1000)) == packing.MAX_WORKERS  # nothing measured (a CPU-side job)


def test_choice_is_the_fewest_workers_near_the_best():
    assert best_level([lv(1, 1000), lv(2, 1600), lv(4, 1640)]) == 2  # within 3% of the best (4)
    assert best_level([lv(1, 1000), lv(2, 1600), lv(4, 2000)]) == 4
    assert best_level([lv(1, 1000), lv(2, 0, error="oom")]) == 1
    with pytest.raises(Exception, match="failed on one worker: boom"):
        best_level([lv(1, 0, error="boom")])


def test_first_trial_is_the_first_fixed_trial_over_a_draw(opt_small_dir):
    from ray import tune

    from sweeper.experiment import Experiment
    from sweeper.tasks import WikiText2PPL

    exp = Experiment(name="p", model=str(opt_small_dir), recipe="onnx_weight_only", task=WikiText2PPL(),
                     search_space={"algorithm": tune.grid_search(["gptq", "rtn"]), "bits": 4,
                                   "block_size": tune.choice([32, 64])},
                     trials=[{"block_size": 128}])
    assert first_trial_config(exp) == {"algorithm": "gptq", "bits": 4, "block_size": 128}
    exp.trials = []
    assert first_trial_config(exp)["block_size"] in (32, 64)
    assert first_trial_config(exp) == first_trial_config(exp)  # the experiment's seed


def test_auto_probe_measures_levels_chooses_and_cleans_up(opt_small_dir, monkeypatch):
    import ray

    from sweeper.devices.kinds import kind_from_dict
    from sweeper.experiment import Experiment
    from sweeper.plan import SweepPlan
    from sweeper.sweep import TRIAL_RESOURCE, pack_gpu_kinds
    from sweeper.tasks import WikiText2PPL

    monkeypatch.setattr(packing, "MAX_WORKERS", 2)  # levels 1 and 2: two CPU cores here
    monkeypatch.setattr(packing, "PROBE_ROUNDS", 1)
    # a kind that holds a (declared) GPU and runs its jobs on the CPU: the probe's placement
    # groups, pools, jobs and choice are the real ones
    fake_gpu = {"name": "testgpu", "resources": {"GPU": 1, "CPU": 0}, "torch_device": "cpu",
                "providers": ["CPUExecutionProvider"]}
    # the fault-test recipe at its plainest: one evaluated epoch of the model, nothing planted
    exp = Experiment(name="auto", model=str(opt_small_dir), recipe="planted_nan", plugins=[PLUGIN],
                     task=WikiText2PPL(max_tokens=2048, context_length=128, stride=128), device="testgpu",
                     kinds=[fake_gpu], workers_per_device="auto", num_samples=1, search_space={"epochs": 1},
                     wandb_project="sweeper-tests").validate()
    kinds = {"testgpu": kind_from_dict(fake_gpu), "cpu": kind_from_dict({"name": "cpu"})}
    ray.init(num_cpus=2, num_gpus=2, resources={TRIAL_RESOURCE: 100}, namespace="sweeper-tests-packing")
    try:
        packed, records = pack_gpu_kinds(exp, kinds, SweepPlan.of(exp, "sweeper-tests-packing", "testgpu"),
                                         "sweeper-tests-packing")
        leftovers = [a for a in ray.util.list_named_actors(all_namespaces=True) if "-pack" in a["namespace"]]
        groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    finally:
        ray.shutdown()
    probe = records["testgpu"]
    assert list(records) == ["testgpu"] and packed["cpu"] is kinds["cpu"]  # a CPU kind is left alone
    assert [lvl["workers"] for lvl in probe["levels"]] == [1, 2]
    assert all(lvl["error"] is None and lvl["jobs"] == lvl["workers"] and lvl["jobs_per_hour"] > 0 for lvl in probe["levels"])
    chosen = best_level([PackingLevel(**lvl) for lvl in probe["levels"]])
    assert probe["workers_per_device"] == chosen and packed["testgpu"].resources["GPU"] == 1 / chosen
    assert probe["seconds"] > 0 and leftovers == [] and groups == []  # every probe pool and group is gone
    json.dumps(records)
