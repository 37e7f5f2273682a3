"""Workers that run TensorFlow jobs.

A TF sweep (a recipe whose config says model_format = "tf") runs on device kinds marked
`frameworks=("tensorflow",)`: each such worker checks at start, on its own node, that
TensorFlow and neural-compressor import, and the pool refuses to start otherwise (one
line naming the kind and node). On a cluster (under `ray job submit`, RAY_ADDRESS set)
the kinds also carry a Ray `runtime_env` that pip-installs the `tf` extra's pins into the
workers' environment, so only TF workers carry TensorFlow; locally the extra installed in
the same virtual environment is used as it is.
"""
from __future__ import annotations

import dataclasses
import os
import socket

from ..models.tf_runtime import ONEDNN_ENV, TF_REQUIREMENTS, TFUnavailable, require_inc

# Set to 0 to keep cluster TF workers in the driver's environment (nodes installed with the extra).
PIP_ENV = "SWEEPER_TF_RUNTIME_ENV"


def on_cluster() -> bool:
    """Returns whether this driver joins an existing Ray cluster (RAY_ADDRESS set)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def tf_runtime_env() -> dict:
    """Returns the Ray runtime_env TF workers start in: the tf extra's pins installed by pip
    on a cluster (unless SWEEPER_TF_RUNTIME_ENV=0), {} locally."""
    if not on_cluster() or os.environ.get(PIP_ENV, "1") == "0":
        return {}
    return {"pip": {"packages": list(TF_REQUIREMENTS), "pip_check": False}, "env_vars": {ONEDNN_ENV: "1"}}


def tf_kind(kind):
    """Returns a copy of DeviceKind `kind` whose workers can run TF jobs: frameworks
    includes "tensorflow" and, on a cluster, runtime_env installs the tf extra (a kind that
    brings its own runtime_env keeps it)."""
    frameworks = tuple(dict.fromkeys(tuple(kind.frameworks) + ("tensorflow",)))
    return dataclasses.replace(kind, frameworks=frameworks, runtime_env=dict(kind.runtime_env) or tf_runtime_env())


def start_error(kind) -> str | None:
    """Returns None when this process can run the jobs of `kind` (its frameworks import),
    else one line naming the kind, the node and how to install what is missing."""
    if "tensorflow" not in getattr(kind, "frameworks", ()):
        return None
    try:
        require_inc()
    except TFUnavailable as exc:
        return f"device kind '{kind.name}' on node {socket.gethostname()} cannot run TensorFlow jobs: {exc}"
    return None
