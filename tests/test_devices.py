"""Device kinds: user kinds from files, fail-fast on kinds and providers nobody has, no
silent CPU fallback, and a multi-node cluster where each trial runs on a node of its kind."""
import json

import pytest

from sweeper.devices.kinds import KINDS, DeviceKind, kind_from_dict, load_kinds_file
from sweeper.devices.ort_session import ProviderUnavailable, create_session
from sweeper.errors import ConfigError
from sweeper.experiment import Experiment
from sweeper.tasks import WikiText2PPL

TASK = WikiText2PPL(max_tokens=2048, context_length=128, stride=128)


def test_builtin_kinds():
    assert KINDS["cuda"].resources["GPU"] == 1 and KINDS["cuda"].provider == "CUDAExecutionProvider"
    gcu = KINDS["gcu"]
    assert gcu.resources["GCU"] == 1 and gcu.provider == "TopsInferenceExecutionProvider"
    assert gcu.precision_env["fp32"] == {"ORT_TOPSINFERENCE_FP16_ENABLE": "0"}


def test_kinds_file(tmp_path):
    f = tmp_path / "kinds.yaml"
    f.write_text("kinds:\n  - name: trt\n    resources: {GPU: 1}\n    torch_device: cuda\n"
                 "    providers: [[TensorrtExecutionProvider, {trt_fp16_enable: true}], CUDAExecutionProvider]\n")
    (kind,) = load_kinds_file(f)
    assert kind.name == "trt" and kind.provider == "TensorrtExecutionProvider"
    assert kind.providers[1] == ("CUDAExecutionProvider", {}) and kind.actor_options()["num_gpus"] == 1


@pytest.mark.parametrize("entry,word", [
    ({"name": "x", "providers": ["Cuda"]}, "providers"),
    ({"name": "x", "resources": {}}, "resources"),
    ({"name": "x y"}, "name"),
    ({"name": "x", "colour": "red"}, "colour"),
    ({"name": "x", "torch_device": "tpu"}, "torch_device"),
])
def test_bad_kind_entries(entry, word):
    with pytest.raises(ConfigError, match=word):
        kind_from_dict(entry)


def test_workers_per_device_share_a_gpu_and_only_a_gpu(opt_small_dir):
    from sweeper.devices.kinds import shared_device

    quarter = shared_device(KINDS["cuda"], 4)
    assert quarter.resources["GPU"] == 0.25 and quarter.actor_options()["num_gpus"] == 0.25
    assert quarter.name == "cuda" and shared_device(KINDS["cpu"], 4) is KINDS["cpu"]
    Experiment(name="d", model=str(opt_small_dir), recipe="onnx_precision", task=TASK, device="cuda",
               workers_per_device=4).validate()
    for bad, device, word in ((2, "cpu", "hold no GPU"), ("auto", "cpu", "hold no GPU"), (0, "cuda", "workers_per_device"),
                              ("many", "cuda", "or .auto.")):
        with pytest.raises(ConfigError, match=word) as e:
            Experiment(name="d", model=str(opt_small_dir), recipe="onnx_precision", task=TASK, device=device,
                       workers_per_device=bad).validate()
        assert "\n" not in str(e.value)


def test_searched_device_must_be_a_kind_of_the_experiment(opt_small_dir):
    from ray import tune

    exp = Experiment(name="d", model=str(opt_small_dir), recipe="onnx_precision", task=TASK, device=["cpu"],
                     search_space={"device": tune.grid_search(["cpu", "gcu"])})
    with pytest.raises(ConfigError, match="device='gcu'"):
        exp.validate()


def _tiny_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_missing_provider_is_one_line(tmp_path):
    kind = DeviceKind("npu", {"CPU": 1}, providers=(("FancyNPUExecutionProvider", {}),))
    with pytest.raises(ProviderUnavailable) as err:
        create_session(_tiny_graph(tmp_path), kind)
    msg = str(err.value)
    assert "'npu'" in msg and "FancyNPUExecutionProvider" in msg and "node" in msg and "\n" not in msg


def test_forced_cpu_fallback_is_refused(tmp_path, monkeypatch):
    # Pretend this CPU-only onnxruntime has the CUDA EP: the session then quietly falls back
    # to the CPU, and get_providers() shows it.
    import sweeper.devices.ort_session as ort_session

    monkeypatch.setattr(ort_session, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable, match="instead of CUDAExecutionProvider"):
        create_session(_tiny_graph(tmp_path), KINDS["cuda"])


@pytest.fixture()
def ray_local():
    import ray

    from sweeper.sweep import init_ray

    init_ray("sweeper-tests-devices")
    yield
    ray.shutdown()


def test_kind_nobody_offers_fails_before_any_trial(ray_local, opt_small_dir, tmp_path):
    from sweeper.sweep import run_experiment

    exp = Experiment(name="nogcu", model=str(opt_small_dir), recipe="onnx_precision", task=TASK, device="gcu",
                     num_samples=1, scheduler="fifo", wandb_project="sweeper-tests")
    with pytest.raises(RuntimeError) as err:
        run_experiment(exp, results_dir=tmp_path, verbose=0)
    assert "'gcu'" in str(err.value) and "GCU" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "nogcu").exists() or not any((tmp_path / "nogcu").glob("trial_main*"))


def test_worker_without_its_provider_fails_at_start(ray_local, opt_small_dir, tmp_path):
    from sweeper.sweep import run_experiment

    npu = {"name": "npu", "resources": {"CPU": 1}, "providers": ["FancyNPUExecutionProvider"]}
    exp = Experiment(name="nonpu", model=str(opt_small_dir), recipe="onnx_precision", task=TASK, device="npu",
                     kinds=[npu], workers=1, num_samples=1, scheduler="fifo", wandb_project="sweeper-tests")
    with pytest.raises(RuntimeError) as err:
        run_experiment(exp, results_dir=tmp_path, verbose=0)
    msg = str(err.value)
    assert "'npu'" in msg and "FancyNPUExecutionProvider" in msg and "node" in msg and "\n" not in msg


def test_multi_node_each_trial_on_a_node_of_its_kind(opt_small_dir, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from sweeper.sweep import TRIAL_RESOURCE, run_experiment

    monkeypatch.setenv("WANDB_MODE", "disabled")  # this sweep tests placement, not tracking
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {TRIAL_RESOURCE: 100}})
    plain = cluster.add_node(num_cpus=1)
    gcu_node = cluster.add_node(num_cpus=1, resources={"GCU": 1})
    try:
        ray.init(address=cluster.address, namespace="sweeper-tests-cluster")
        fake_gcu = {"name": "testgcu", "resources": {"GCU": 1, "CPU": 0}, "torch_device": None,
                    "providers": ["CPUExecutionProvider"]}
        exp = Experiment(name="kinds", model=str(opt_small_dir), recipe="onnx_precision", task=TASK,
                         device=["cpu", "testgcu"], kinds=[fake_gcu], workers=1, num_samples=1, scheduler="fifo",
                         search_space={"precision": "fp32"}, wandb_project="sweeper-tests")
        s = run_experiment(exp, results_dir=tmp_path, verbose=0).summary
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(s["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in s["trials"])
    by_kind = {}
    for t in s["trials"]:
        wid = t["metrics"]["worker_id"]
        kind = s["devices"][wid]["kind"]
        assert kind == t["config"]["device"]  # ran on a worker of its kind ...
        by_kind.setdefault(kind, set()).add(s["devices"][wid]["node_id"])
    assert by_kind["testgcu"] == {gcu_node.node_id}  # ... on the node that offers it, none elsewhere
    assert by_kind["cpu"] <= {plain.node_id, gcu_node.node_id}
    assert len(s["reports"]) == 2 and {r["device"] for r in s["reports"]} == {"cpu", "testgcu"}
    assert s["pool"]["stranded"] == 0 and s["pool"]["free"] == s["pool"]["workers"] == 2
    json.dumps(s, default=str)
