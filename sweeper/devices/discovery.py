"""What the Ray cluster really holds: per node, its resources, the execution providers its
onnxruntime build has, and how many workers of each device kind it can host."""
from __future__ import annotations

from .kinds import KINDS, DeviceKind, capacity


def _probe() -> dict:
    """Runs on one node: returns its host name and onnxruntime's providers there."""
    import socket

    try:
        import onnxruntime as ort

        providers, version = list(ort.get_available_providers()), ort.__version__
    except Exception as exc:  # no onnxruntime on that node
        providers, version = [], f"not importable ({type(exc).__name__})"
    return {"host": socket.gethostname(), "providers": providers, "onnxruntime": version}


def discover(kinds: dict[str, DeviceKind] | None = None, timeout_s: float = 60.0) -> list[dict]:
    """Returns one dict per alive node: node_id, address, host, resources (without the
    per-node bookkeeping keys), providers (onnxruntime's, on that node), onnxruntime
    version, and kinds {name: workers it can host} for every kind whose resources it offers
    (`kinds`: default all registered). Each node is probed by a zero-CPU task pinned to it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    kinds = kinds or KINDS
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    found = ray.get(refs, timeout=timeout_s)
    out = []
    for n, f in zip(nodes, found):
        res = {k: v for k, v in n["Resources"].items()
               if not k.startswith(("node:", "object_store_memory", "memory", "accelerator_type"))}
        offered = {name: capacity(k, res) for name, k in kinds.items()}
        out.append({"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"), **f, "resources": res,
                    "kinds": {name: c for name, c in offered.items() if c > 0},
                    "kinds_usable": {name: c for name, c in offered.items()
                                     if c > 0 and kinds[name].provider in f["providers"]}})
    return out


def usable_kinds(nodes: list[dict], kinds: dict[str, DeviceKind] | None = None) -> list[str]:
    """Returns the kinds (registration order) some node can host with the kind's execution
    provider present: what "all available" means for an ONNX sweep."""
    kinds = kinds or KINDS
    return [name for name in kinds if any(name in n["kinds_usable"] for n in nodes)]
