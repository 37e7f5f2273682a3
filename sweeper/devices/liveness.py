"""How long anything in a sweep may take before the engine stops waiting for it.

One frozen value shared by the trials, the pool and the workers, so every wait in the
engine is bounded by the same numbers and a test can shrink them all at once.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Liveness:
    """heartbeat_timeout_s: a job whose trial has not polled it for this long is cancelled;
    a cancelled job that has not stopped this long after is killed with its worker; an
    ended job whose trial has not acknowledged it this long after frees its worker (s).
    call_timeout_s: the longest any single remote call may take, a worker's start or
    restart included; a worker that does not answer the pool's probe this long is killed (s)."""

    heartbeat_timeout_s: float = 30.0
    call_timeout_s: float = 60.0

    @property
    def poll_s(self) -> float:
        """Returns the longest a trial's poll waits for news (s): a quarter heartbeat, at most 2 s."""
        return min(2.0, self.heartbeat_timeout_s / 4)

    @property
    def tick_s(self) -> float:
        """Returns how often the pool's watchdog looks at its leases (s)."""
        return min(1.0, self.heartbeat_timeout_s / 4)

    @property
    def cancel_grace_s(self) -> float:
        """Returns how long a cancelled job may take to stop before its worker is killed (s)."""
        return self.heartbeat_timeout_s

    @property
    def ack_timeout_s(self) -> float:
        """Returns how long an ended job's worker waits for its trial's acknowledgement
        before the pool takes it back (the trial is gone) (s)."""
        return self.heartbeat_timeout_s
