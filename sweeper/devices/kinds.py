"""Device kinds: a name, the Ray resources one worker of it holds, its torch device and
the ONNX Runtime execution providers (with options) its sessions use."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device a worker can own.

    resources: Ray resources one worker holds, e.g. {"CPU": 1} or {"GPU": 1}.
    torch_device: "cpu" or "cuda" (None for kinds reached only through ONNX Runtime).
    threads: torch and onnxruntime intra-op threads a worker of this kind uses.
    providers: onnxruntime execution providers in priority order, as (name, options) pairs.
    The first is the one the kind exists for: a session that does not get it is refused.
    precision_env: {precision: {ENV_VAR: value}} for providers that switch precision
    through the environment (Enflame's TopsInference EP: ORT_TOPSINFERENCE_FP16_ENABLE);
    a precision not listed here is had by converting the graph itself (e.g. to FP16).
    runtime_env: the Ray runtime_env its workers start in ({}: the driver's environment);
    on a cluster, TF sweeps give their kinds one that installs the `tf` extra
    (devices/tf_workers.py), so torch-only workers need not carry TensorFlow.
    frameworks: what its workers must be able to import besides torch and onnxruntime
    (("tensorflow",) for TF jobs); a worker that cannot refuses to start, naming its node.
    """

    name: str
    resources: dict = field(default_factory=dict)
    torch_device: str | None = "cpu"
    threads: int = 1
    providers: tuple = (("CPUExecutionProvider", {}),)
    precision_env: dict = field(default_factory=dict)
    runtime_env: dict = field(default_factory=dict)
    frameworks: tuple = ()

    @property
    def provider(self) -> str:
        """Returns the name of the execution provider this kind exists for."""
        return self.providers[0][0]

    def actor_options(self) -> dict:
        """Returns the ray.remote options that make an actor hold this kind's resources."""
        res = dict(self.resources)
        opts = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0)}
        if res:
            opts["resources"] = res
        if self.runtime_env:
            opts["runtime_env"] = dict(self.runtime_env)
        return opts


KINDS: dict[str, DeviceKind] = {
    "cpu": DeviceKind("cpu", {"CPU": 1}, "cpu", threads=1),
    # Ray sets CUDA_VISIBLE_DEVICES to the worker's one GPU, so it is device 0 in the actor.
    "cuda": DeviceKind("cuda", {"GPU": 1, "CPU": 0}, "cuda", threads=1,
                       providers=(("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {}))),
    # Enflame GCU through onnxruntime's TopsInference EP, one custom "GCU" resource per card.
    # The EP runs FP16 mixed precision unless ORT_TOPSINFERENCE_FP16_ENABLE=0 (Enflame's
    # model zoo switches it that way), so both precisions use the FP32 graph.
    "gcu": DeviceKind("gcu", {"GCU": 1, "CPU": 0}, None, threads=1,
                      providers=(("TopsInferenceExecutionProvider", {}),),
                      precision_env={"fp16": {"ORT_TOPSINFERENCE_FP16_ENABLE": "1"},
                                     "fp32": {"ORT_TOPSINFERENCE_FP16_ENABLE": "0"}}),
}


def get_kind(name: str) -> DeviceKind:
    """Returns the registered device kind called `name`, or raises ConfigError."""
    if name not in KINDS:
        raise ConfigError("experiment", "device", name, ", ".join(sorted(KINDS)))
    return KINDS[name]


def register_kind(kind: DeviceKind) -> DeviceKind:
    """Registers (or replaces) a device kind; returns it."""
    KINDS[kind.name] = kind
    return kind


KIND_FIELDS = ("name", "resources", "torch_device", "threads", "providers", "precision_env")


def kind_from_dict(d: dict, where: str = "device kind") -> DeviceKind:
    """Returns the DeviceKind described by `d` (keys of KIND_FIELDS; providers as a list of
    provider names or [name, {options}] pairs); raises ConfigError (one line) on a bad entry."""
    from ..config import check_int

    if not isinstance(d, dict):
        raise ConfigError(where, "entry", d, "a mapping with " + ", ".join(KIND_FIELDS))
    unknown = [k for k in d if k not in KIND_FIELDS]
    if unknown:
        raise ConfigError(where, unknown[0], d[unknown[0]], "fields " + ", ".join(KIND_FIELDS))
    name = d.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(where, "name", name, "letters, digits, '-' and '_'")
    where = f"device kind {name}"
    res = d.get("resources", {"CPU": 1})
    if not isinstance(res, dict) or not res or not all(isinstance(v, (int, float)) and v >= 0 for v in res.values()):
        raise ConfigError(where, "resources", res, "a non-empty mapping of Ray resource -> amount >= 0")
    if d.get("torch_device", "cpu") not in ("cpu", "cuda", None):
        raise ConfigError(where, "torch_device", d.get("torch_device"), "'cpu', 'cuda' or null")
    check_int(where, "threads", d.get("threads", 1), 1, 1024)
    providers = []
    for p in d.get("providers", ["CPUExecutionProvider"]):
        if isinstance(p, str):
            p = [p, {}]
        if (not isinstance(p, (list, tuple)) or len(p) != 2 or not isinstance(p[0], str)
                or not p[0].endswith("ExecutionProvider") or not isinstance(p[1], dict)):
            raise ConfigError(where, "providers", p, "'XxxExecutionProvider' or [name, {options}]")
        providers.append((p[0], dict(p[1])))
    if not providers:
        raise ConfigError(where, "providers", [], "at least one execution provider")
    env = d.get("precision_env", {})
    if not isinstance(env, dict) or not all(isinstance(v, dict) for v in env.values()):
        raise ConfigError(where, "precision_env", env, "a mapping precision -> {ENV_VAR: value}")
    return DeviceKind(name, {str(k): v for k, v in res.items()}, d.get("torch_device", "cpu"), d.get("threads", 1),
                      tuple(providers), {p: {str(k): str(v) for k, v in e.items()} for p, e in env.items()})


def load_kinds_file(path) -> list[DeviceKind]:
    """Returns the device kinds listed in a YAML or JSON file (a list of kind mappings, or
    {"kinds": [...]}) without registering them; raises ConfigError naming the file."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError("device kinds file", "path", str(p), f"a readable YAML or JSON file ({type(exc).__name__}: {exc})") from None
    entries = data.get("kinds") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"device kinds file {p}", "kinds", type(entries).__name__, "a list of kind mappings")
    return [kind_from_dict(e, f"device kinds file {p}") for e in entries]


def shared_device(kind: DeviceKind, workers_per_device: int) -> DeviceKind:
    """Returns `kind` with each worker holding 1/workers_per_device of its GPU share (the
    same kind when it holds no GPU or workers_per_device is 1); its other resources (CPU
    slots) stay per worker."""
    gpu = kind.resources.get("GPU", 0)
    if workers_per_device == 1 or gpu <= 0:
        return kind
    return dataclasses.replace(kind, resources={**kind.resources, "GPU": gpu / workers_per_device})


def capacity(kind: DeviceKind, cluster_resources: dict) -> int:
    """Returns how many workers of `kind` the cluster's total resources can hold at once."""
    limits = []
    for res, amount in kind.resources.items():
        if amount > 0:
            limits.append(int(cluster_resources.get(res, 0) // amount))
    return min(limits) if limits else 0


def local_cpu_count() -> int:
    """Returns the number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
