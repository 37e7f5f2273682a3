"""ONNX Runtime sessions for a device kind, with no silent fallback to the CPU.

onnxruntime quietly drops a requested execution provider it lacks (or fails to start) and
runs everything on the CPU. A sweep that compares devices must never do that, so a session
is created only when the kind's provider is installed, and refused when the created
session does not list that provider (`session.get_providers()`).
"""
from __future__ import annotations

import socket

from ..errors import DeviceUnavailable
from .kinds import DeviceKind


class ProviderUnavailable(DeviceUnavailable):
    """A device kind's execution provider is missing on this node, or a session fell back."""


def node_name() -> str:
    """Returns this node's host name (for error lines)."""
    return socket.gethostname()


def available_providers() -> list[str]:
    """Returns the execution providers this node's onnxruntime build has."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def check_provider(kind: DeviceKind) -> None:
    """Raises ProviderUnavailable (one line naming kind, provider and node) unless this
    node's onnxruntime has the kind's provider."""
    have = available_providers()
    if kind.provider not in have:
        raise ProviderUnavailable(
            f"device kind '{kind.name}' needs onnxruntime's {kind.provider} on node {node_name()}, "
            f"which has only {', '.join(have)} (install the onnxruntime build that provides it)")


def create_session(path, kind: DeviceKind, *, threads: int | None = None, precision: str | None = None):
    """Returns an onnxruntime.InferenceSession for the graph at `path` on `kind`'s providers,
    with the environment the kind's provider reads for `precision` (see precision_env).

    Raises ProviderUnavailable when the provider is missing or the session fell back to
    another provider (e.g. CUDA EP present but no usable GPU)."""
    import os

    import onnxruntime as ort

    check_provider(kind)
    # A worker runs one job at a time, so setting its process environment here is safe.
    os.environ.update(kind.precision_env.get(precision or "", {}))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or kind.threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about node placement are expected and noisy
    names = [name for name, _ in kind.providers]
    provider_options = [dict(opts) for _, opts in kind.providers]
    session = ort.InferenceSession(str(path), sess_options=options, providers=names, provider_options=provider_options)
    got = session.get_providers()
    if kind.provider not in got:
        raise ProviderUnavailable(
            f"device kind '{kind.name}': onnxruntime on node {node_name()} created the session on "
            f"{', '.join(got)} instead of {kind.provider} (refusing a silent CPU fallback)")
    return session
