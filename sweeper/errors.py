"""Errors a user can act on: one line naming the field, the value and what is allowed."""


class SweeperError(Exception):
    """Base class for every error the sweeper raises on purpose."""


class ConfigError(SweeperError, ValueError):
    """A value a user wrote is not allowed; the message is one line."""

    def __init__(self, where: str, field: str, value, allowed: str):
        self.where, self.field, self.value, self.allowed = where, field, value, allowed
        super().__init__(f"{where}: {field}={value!r} is not allowed; allowed: {allowed}")


class DataNotFoundError(SweeperError, FileNotFoundError):
    """A dataset split exists neither in the local data folder nor on the hub."""


class ModelNotFoundError(SweeperError, FileNotFoundError):
    """A model name is neither a local path, a reference-model name nor a reachable hub id."""


class DeviceUnavailable(SweeperError, RuntimeError):
    """A device kind asked for cannot run here: no node offers it, or its onnxruntime
    execution provider is missing (or a session fell back to another provider)."""


class JobCancelled(SweeperError):
    """A job on a device worker was cancelled (scheduler stop or lost trial)."""
