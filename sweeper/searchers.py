"""How a sweep draws its trials: "random" (Tune's variant generator: grids, random samples)
or "optuna" (Optuna's TPE through Ray Tune's OptunaSearch, with every objective of the
experiment: one objective is TPE, several are multi-objective TPE, which models the
Pareto front of the objectives instead of one weighted sum).

Optuna takes only sampled dimensions (choice, uniform, ...), no grids; the experiment's
fixed trials run first, as they are, and Optuna learns from its own trials only.
"""
from __future__ import annotations

import pickle
import random
import tempfile
from pathlib import Path

from ray.tune.search import Searcher

from .errors import ConfigError

SEARCHERS = ("random", "optuna")


def check_searcher(exp, space: dict) -> None:
    """Raises ConfigError (one line) when `exp.searcher` cannot search `space` (the
    experiment's search space less job keys)."""
    from ray.tune.search import sample

    if exp.searcher == "random":
        return
    where = "experiment"
    grids = [k for k, v in space.items() if isinstance(v, dict) and "grid_search" in v]
    if grids:
        raise ConfigError(where, "searcher", exp.searcher, f"'random' for a space with grid_search ({grids[0]}); "
                          f"optuna samples: use tune.choice instead")
    functions = [k for k, v in space.items() if isinstance(v, sample.Function)]
    if functions:
        raise ConfigError(where, "searcher", exp.searcher, f"'random' for a space with sample_from ({functions[0]})")
    if not any(isinstance(v, sample.Domain) for v in space.values()):
        raise ConfigError(where, "searcher", exp.searcher, "a search space with at least one sampled dimension")
    if exp.seeds > 1:
        raise ConfigError(where, "searcher", exp.searcher, "'random' when seeds > 1 (repeats are a grid over seeds)")


def make_search_alg(exp, space: dict, points: list[dict], max_concurrent: int):
    """Returns Tune's search algorithm for the sweep: `points` (the fixed trials) first, then
    `exp.num_samples` draws of `space`, at most `max_concurrent` trials at a time."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if exp.searcher == "random":
        # Tune ignores max_concurrent_trials for a given BasicVariantGenerator
        return BasicVariantGenerator(random_state=exp.seed, max_concurrent=max_concurrent,
                                     points_to_evaluate=points or None,
                                     # one random draw for all of a sample's grid variants:
                                     # the repeats of a configuration share its values
                                     constant_grid_search=exp.seeds > 1)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    objectives, _ = exp.goals()
    metrics, modes = [o.metric for o in objectives], [o.mode for o in objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=exp.seed, n_startup_trials=max(2, min(10, exp.num_samples // 3)))
    inner = OptunaSearch(metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0], sampler=sampler, seed=exp.seed)
    fixed = [complete_point(p, space, exp.seed + i) for i, p in enumerate(points)]
    return ConcurrencyLimiter(FixedFirst(fixed, inner), max_concurrent=max_concurrent)


def complete_point(point: dict, space: dict, seed: int) -> dict:
    """Returns the fixed trial `point` with every sampled key of `space` it lacks drawn
    (seeded), as Tune's variant generator fills a partial point."""
    from ray.tune.search import sample

    rng = random.Random(seed)
    out = dict(point)
    for key, domain in space.items():
        if key not in out and isinstance(domain, sample.Domain):
            out[key] = domain.sample(random_state=rng.randrange(2**31))
    return out


class FixedFirst(Searcher):
    """A Tune Searcher: hands out `fixed` configs first, as they are, then `inner`'s
    suggestions; tells `inner` only of the trials it suggested. A suggestion equal to a
    configuration that already finished (TPE repeats itself on small categorical spaces)
    is not run again: `inner` is told that configuration's result and draws anew, up to
    MAX_REDRAWS times."""

    MAX_REDRAWS = 20

    def __init__(self, fixed: list[dict], inner):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.fixed, self.inner = list(fixed), inner
        self.own: dict[str, str] = {}  # Tune trial id -> the id inner knows it by
        self.keys: dict[str, str] = {}  # Tune trial id -> its configuration's key
        self.finished: dict[str, dict] = {}  # configuration key -> its result
        self.constants: dict = {}
        self.redrawn = 0  # suggestions not run because their configuration had finished

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        from ray.tune.search import sample

        self.constants = {k: v for k, v in config.items() if not isinstance(v, sample.Domain)}
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def key(self, config: dict) -> str:
        """Returns the identity of a configuration: its values over the space's constants."""
        import json

        return json.dumps({**self.constants, **config}, sort_keys=True, default=str)

    def suggest(self, trial_id: str):
        if self.fixed:
            config = self.fixed.pop(0)
            self.keys[trial_id] = self.key(config)
            return config
        config = None
        for attempt in range(self.MAX_REDRAWS):
            inner_id = trial_id if attempt == 0 else f"{trial_id}-redraw{attempt}"
            config = self.inner.suggest(inner_id)
            if not isinstance(config, dict):  # None (wait) or FINISHED
                return config
            key = self.key(config)
            if key not in self.finished:
                break
            self.inner.on_trial_complete(inner_id, result=self.finished[key])
            self.redrawn += 1
        self.own[trial_id], self.keys[trial_id] = inner_id, key
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.own:
            self.inner.on_trial_result(self.own[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and trial_id in self.keys:
            self.finished[self.keys[trial_id]] = result
        if trial_id in self.own:
            self.inner.on_trial_complete(self.own[trial_id], result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        # one file: Tune writes it under a temporary name and renames it
        with tempfile.TemporaryDirectory() as tmp:
            self.inner.save(str(Path(tmp) / "inner.pkl"))
            inner = (Path(tmp) / "inner.pkl").read_bytes()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"fixed": self.fixed, "own": self.own, "keys": self.keys, "finished": self.finished,
                         "constants": self.constants, "redrawn": self.redrawn, "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "inner.pkl").write_bytes(state["inner"])
            self.inner.restore(str(Path(tmp) / "inner.pkl"))
        self.fixed, self.own, self.keys, self.finished = state["fixed"], state["own"], state["keys"], state["finished"]
        self.constants, self.redrawn = state["constants"], state["redrawn"]
