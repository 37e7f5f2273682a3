"""The sweep's exit policy (Experiment.stop, time_budget_s, max_trials): a Ray Tune stopper
that ends the whole sweep at the first feasible trial, after a time budget or after a
number of ended trials, whichever comes first, and remembers why."""
from __future__ import annotations

import time

from ray.tune import Callback
from ray.tune.stopper import Stopper


class ExitPolicy(Stopper, Callback):
    """Stops every trial once: a result meets every constraint (`first_feasible`), the sweep
    has run `time_budget_s` seconds, or `max_trials` trials have ended. `reason` says which
    (None while none did). Also a Tune callback: it counts ended trials."""

    def __init__(self, constraints: list, baseline: dict, first_feasible: bool = False,
                 time_budget_s: float | None = None, max_trials: int | None = None):
        self.constraints, self.baseline = list(constraints), dict(baseline)
        self.first_feasible, self.time_budget_s, self.max_trials = first_feasible, time_budget_s, max_trials
        self.start = time.monotonic()
        self.ended: set[str] = set()
        self.live: dict = {}  # trial id -> Tune trial, started and not ended
        self.reason: str | None = None
        # callbacks to tell of the trials the stop ended: Tune stops them without calling
        # on_trial_complete, so their jobs would run on until the heartbeat lapses and W&B's
        # logging actors would wait for an end signal that never comes
        self.tell: list = []

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.reason is None and self.first_feasible and all(c.holds(result, self.baseline) for c in self.constraints):
            self.reason = (f"first_feasible: trial {trial_id} met every constraint "
                           f"({'; '.join(c.text for c in self.constraints)}) at report {result.get('training_iteration')}")
        return False

    def stop_all(self) -> bool:
        if self.reason is None and self.time_budget_s is not None and time.monotonic() - self.start >= self.time_budget_s:
            self.reason = f"time_budget_s: {self.time_budget_s:g} s of sweep passed"
        if self.reason is None and self.max_trials is not None and len(self.ended) >= self.max_trials:
            self.reason = f"max_trials: {len(self.ended)} trials ended"
        return self.reason is not None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.live[trial.trial_id] = trial

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)
        self.live.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial)

    def on_experiment_end(self, trials, **info):
        """Tells `tell` of every trial the stop ended while it ran (this callback must come
        before them in Tune's list)."""
        if self.reason is None:
            return
        for trial in list(self.live.values()):
            for cb in self.tell:
                cb.on_trial_complete(iteration=0, trials=trials, trial=trial)
        self.live.clear()


def exit_policy_for(exp, baseline: dict) -> ExitPolicy | None:
    """Returns the ExitPolicy of the experiment (None when it sets none)."""
    if exp.stop is None and exp.time_budget_s is None and exp.max_trials is None:
        return None
    _, constraints = exp.goals()
    return ExitPolicy(constraints, baseline, first_feasible=exp.stop == "first_feasible",
                      time_budget_s=exp.time_budget_s, max_trials=exp.max_trials)
