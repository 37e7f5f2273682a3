"""Device kinds: a name, the Ray resources one worker of it holds, and its torch device."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device a worker can own.

    resources: Ray resources one worker holds, e.g. {"CPU": 1} or {"GPU": 1}.
    torch_device: "cpu" or "cuda" (None for kinds reached only through ONNX Runtime).
    threads: torch intra-op threads a worker of this kind uses.
    """

    name: str
    resources: dict = field(default_factory=dict)
    torch_device: str | None = "cpu"
    threads: int = 1

    def actor_options(self) -> dict:
        """Returns the ray.remote options that make an actor hold this kind's resources."""
        res = dict(self.resources)
        opts = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0)}
        if res:
            opts["resources"] = res
        return opts


KINDS: dict[str, DeviceKind] = {
    "cpu": DeviceKind("cpu", {"CPU": 1}, "cpu", threads=1),
    "cuda": DeviceKind("cuda", {"GPU": 1, "CPU": 0}, "cuda", threads=1),
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
