"""cluster.yaml: valid for Ray's cluster launcher (its own schema and checks, as `ray up`
runs them) and able to hold every built-in device kind and the sweep's trials."""
import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from sweeper.devices.kinds import KINDS, capacity
from sweeper.sweep import TRIAL_RESOURCE, trial_resources

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
PROJECT_MOUNT = "/home/ray/sweeper"


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_up_checks(config: dict) -> dict:
    """Runs what `ray up` runs on a config before it contacts the cloud
    (ray.autoscaler._private.commands._bootstrap_config): merge with the provider's
    defaults, then validate against ray-schema.json plus Ray's cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def node_types(config: dict) -> dict:
    return config["available_node_types"]


def workers(config: dict) -> dict:
    return {name: t for name, t in node_types(config).items() if name != config["head_node_type"]}


def test_ray_schema_accepts_cluster_yaml(raw):
    prepared = ray_up_checks(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("change", [
    {"bogus_top_level_key": 1},
    {"max_workers": "lots"},
], ids=["unknown-key", "max-workers-not-int"])
def test_ray_schema_rejects_broken_copy(raw, change):
    broken = {**copy.deepcopy(raw), **change}
    with pytest.raises(jsonschema.ValidationError):
        ray_up_checks(broken)


def test_ray_checks_reject_fractional_resource_and_min_over_global(raw):
    frac = copy.deepcopy(raw)
    frac["available_node_types"]["gcu"]["resources"]["GCU"] = 0.5  # the schema wants integers
    with pytest.raises(jsonschema.ValidationError):
        ray_up_checks(frac)
    too_many = copy.deepcopy(raw)
    too_many["available_node_types"]["cpu"]["min_workers"] = raw["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        ray_up_checks(too_many)


def test_node_types_for_each_device_kind(raw):
    types = workers(raw)
    assert {"cpu", "gpu", "gcu"} <= set(types)
    assert types["cpu"]["resources"].get("CPU", 0) >= 1
    assert types["gpu"]["resources"].get("GPU", 0) >= 1
    assert types["gcu"]["resources"].get("GCU", 0) >= 1


@pytest.mark.parametrize("kind_name", ["cpu", "cuda", "gcu"])
def test_every_builtin_kind_fits_a_launchable_node_type(raw, kind_name):
    kind = KINDS[kind_name]
    fits = [name for name, t in workers(raw).items()
            if t.get("max_workers", raw["max_workers"]) >= 1 and capacity(kind, t["resources"]) >= 1]
    assert fits, f"no worker node type offers {kind.resources} (kind {kind_name})"


def test_head_offers_trials_and_no_device(raw):
    head = node_types(raw)[raw["head_node_type"]]["resources"]
    assert head.get(TRIAL_RESOURCE, 0) >= 1
    # the sweep then gives each trial one sweeper_trial unit rather than a sliver of CPU
    assert trial_resources(head) == {TRIAL_RESOURCE: 1}
    # device workers stay off the head: it offers none of what a kind holds
    for kind in KINDS.values():
        if kind.name in ("cpu", "cuda", "gcu"):
            assert capacity(kind, head) == 0, kind.name
    # and no worker node type offers sweeper_trial, so trials all run on the head
    for name, t in workers(raw).items():
        assert TRIAL_RESOURCE not in t["resources"], name


def test_autoscaling_bounds(raw):
    global_max = raw["max_workers"]
    assert isinstance(global_max, int) and global_max >= 1
    for name, t in workers(raw).items():
        assert "min_workers" in t and "max_workers" in t, name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= global_max, name
    assert sum(t["min_workers"] for t in workers(raw).values()) <= global_max


def test_setup_commands_install_the_project(raw):
    assert raw["file_mounts"][PROJECT_MOUNT] == "."
    prepared = ray_up_checks(raw)

    def installs(cmds):
        return any("pip install" in c and PROJECT_MOUNT in c for c in cmds)

    # the head runs setup_commands + head_setup_commands (merged by prepare_config)
    assert installs(prepared["head_setup_commands"])
    # a worker runs its node type's worker_setup_commands if it has them, else the merged
    # setup_commands + worker_setup_commands (ray.autoscaler._private.autoscaler)
    for name, t in workers(prepared).items():
        cmds = t.get("worker_setup_commands", prepared["worker_setup_commands"])
        assert installs(cmds), name


@pytest.mark.parametrize("node_type,provider", [("gpu", "CUDAExecutionProvider"),
                                                ("gcu", "TopsInferenceExecutionProvider")])
def test_accelerator_nodes_swap_the_cpu_onnxruntime(raw, node_type, provider):
    cmds = node_types(raw)[node_type]["worker_setup_commands"]
    install = next(i for i, c in enumerate(cmds) if PROJECT_MOUNT in c)
    uninstall = next(i for i, c in enumerate(cmds) if c.startswith("pip uninstall") and "onnxruntime" in c)
    reinstall = next(i for i, c in enumerate(cmds) if "--force-reinstall" in c)
    assert install < uninstall < reinstall
    assert provider in cmds[-1]  # setup fails on a node without its execution provider
    assert KINDS["cuda" if node_type == "gpu" else "gcu"].provider == provider


def test_data_dir_is_set_on_every_node(raw):
    opts = " ".join(raw["docker"]["run_options"])
    assert "SWEEPER_DATA_DIR=/home/ray/data" in opts
    assert "/home/ray/data" in raw["file_mounts"]
