"""``searcher init``'s budget: how many trials fit the minutes asked on this machine, and the
time they really take.

When the minutes cannot hold the fewest trials worth running, the study is shaped to fit:
first fewer epochs per trial (short trials still rank configurations, as successive halving
relies on), then fewer knobs searched (a handful of knobs needs fewer random start-up trials).
When even that does not fit, the shaped study is written with its fewest trials and the one
line says the minutes it needs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

MAX_TRIALS = 300
# The fewest trials worth running: the full space's 10 random start-up trials, then a few that
# TPE guides; a handful of knobs makes do with 4 start-up trials.
MIN_TRIALS, MIN_TRIALS_FEW_KNOBS = 12, 8
FEW_KNOBS_STARTUP = 4
MIN_EPOCHS = 5  # below this, the pruner's warm-up and early stopping leave nothing to compare
_HEADROOM = 0.8  # the budget fills 80 % of the minutes asked: trials vary in length
# Pruning and early stopping end most trials well before max_epochs (digits-mlp: ~55 %).
_EPOCH_SHARE = 0.55
_PER_TRIAL_OVERHEAD_S = 1.0  # storage, clearing the session, sampling
# Kept when the knobs are few: they matter most (learning rate first), and the network's size
# and the batch size set what a trial costs. The rest is fixed at the baseline's values.
_FEW_KNOBS = ("learning_rate", "dropout", "batch_size", "depth", "units", "filters", "dense_units")
_FIXED = {"activation": "relu", "initializer": "he_normal", "optimizer": "adam", "l2": 0.0, "batch_norm": False,
          "conv_dropout": 0.0}


@dataclass(frozen=True)
class TrialCost:
    """What one trial costs here, from a short measured run of a middle configuration."""

    epoch_s: float  # a steady epoch
    first_epoch_extra_s: float  # building and tracing the model: once per model
    folds: int = 1  # a cross-validated trial trains one model per fold

    def trial_seconds(self, raw: dict[str, Any]) -> float:
        """Expected seconds of one trial of the spec ``raw``: pruning and early stopping end most
        trials early, but none before the pruner's warm-up is over."""
        max_epochs = raw["training"]["max_epochs"]
        warmup = raw["pruner"].get("n_warmup_steps", 0)
        epochs = min(max_epochs, max(_EPOCH_SHARE * max_epochs, warmup + 2))
        return self.folds * (self.epoch_s * epochs + self.first_epoch_extra_s) + _PER_TRIAL_OVERHEAD_S


@dataclass(frozen=True)
class Sizing:
    """The budget ``init`` chose, the spec it belongs to (shaped if it had to be), and why."""

    raw: dict[str, Any]
    n_trials: int
    trial_seconds: float
    workers: int
    note: str | None  # one line when the minutes asked cannot hold the fewest trials worth running
    shaped: tuple[str, ...]  # what shaping changed, for the spec's comments

    @property
    def seconds(self) -> float:
        """Wall time of the whole budget here: trials x seconds each / workers."""
        return self.n_trials * self.trial_seconds / self.workers


def size_budget(raw: dict[str, Any], cost: TrialCost, *, minutes: float, workers: int) -> Sizing:
    """The most trials of ``raw`` (at most MAX_TRIALS) that fit ``minutes`` with ``workers``;
    shape the study when not even the fewest worth running fit."""
    available = minutes * 60 * workers * _HEADROOM
    full = cost.trial_seconds(raw)
    if available >= MIN_TRIALS * full:
        return _sized(raw, min(MAX_TRIALS, int(available / full)), full, workers)
    shapes = list(_shapes(raw))
    for shaped, least, changes in shapes:
        seconds = cost.trial_seconds(shaped)
        if available >= least * seconds:
            note = (f"--minutes {minutes:g} cannot hold {MIN_TRIALS} trials of the full study here (about "
                    f"{_duration(MIN_TRIALS * full / workers)}); shaped to fit: {'; '.join(changes)}")
            return _sized(shaped, min(MAX_TRIALS, int(available / seconds)), seconds, workers, note, changes)
    shaped, least, changes = shapes[-1] if shapes else (raw, MIN_TRIALS, ())
    seconds = cost.trial_seconds(shaped)
    needed = math.ceil(least * seconds / workers / 60 / _HEADROOM)
    full_needed = math.ceil(MIN_TRIALS * full / workers / 60 / _HEADROOM)
    smaller = f"even shaped ({'; '.join(changes)}), " if changes else ""
    note = (f"--minutes {minutes:g} is too short here: {smaller}the fewest trials worth running ({least}) take about "
            f"{_duration(least * seconds / workers)}; pass --minutes {needed}"
            + (f", or --minutes {full_needed} for the full study" if changes else ""))
    return _sized(shaped, least, seconds, workers, note, changes)


def _sized(raw: dict[str, Any], n_trials: int, seconds: float, workers: int, note: str | None = None,
           shaped: tuple[str, ...] = ()) -> Sizing:
    raw = {**raw, "budget": {**raw.get("budget", {}), "n_trials": n_trials}}
    return Sizing(raw, n_trials, seconds, workers, note, shaped)


def _shapes(raw: dict[str, Any]):
    """Shaped copies of ``raw``, the mildest first, each with its fewest trials worth running and
    what it changed: fewer epochs on the full space, then fewer knobs (fewer epochs again)."""
    max_epochs = raw["training"]["max_epochs"]
    for epochs in range(max_epochs - 1, MIN_EPOCHS - 1, -1):
        yield _with_epochs(raw, epochs), MIN_TRIALS, (f"{epochs} epochs per trial (was {max_epochs})",)
    few = _with_few_knobs(raw)
    if few is None:
        return
    names = ", ".join(name for name, knob in few["search"].items() if isinstance(knob, dict))
    knobs = f"{_searched(few)} of {_searched(raw)} knobs searched ({names})"
    for epochs in range(max_epochs, MIN_EPOCHS - 1, -1):
        epoch_change = (f"{epochs} epochs per trial (was {max_epochs})",) if epochs < max_epochs else ()
        yield _with_epochs(few, epochs), MIN_TRIALS_FEW_KNOBS, (*epoch_change, knobs)


def _with_epochs(raw: dict[str, Any], epochs: int) -> dict[str, Any]:
    shaped = copy.deepcopy(raw)
    training = shaped["training"]
    training["max_epochs"] = epochs
    if training.get("patience"):
        training["patience"] = min(training["patience"], max(2, epochs // 2))
    pruner = shaped["pruner"]
    if "n_warmup_steps" in pruner:
        pruner["n_warmup_steps"] = min(pruner["n_warmup_steps"], max(1, epochs // 2))
    return shaped


def _with_few_knobs(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` searching only the knobs in _FEW_KNOBS; None when it searches no more than those."""
    search = raw["search"]
    if all(name in _FEW_KNOBS for name in search):
        return None
    shaped = copy.deepcopy(raw)
    shaped["search"] = {name: knob for name, knob in search.items() if name in _FEW_KNOBS}
    kept = set(shaped["search"])
    # A fixed knob takes its default's value; a baseline keeps only what is still searched.
    shaped["search"].update({name: value for name, value in _FIXED.items() if name in search})
    shaped["baselines"] = [{**b, "params": {k: v for k, v in b["params"].items() if k in kept}}
                           for b in raw.get("baselines", ())]
    shaped["sampler"] = {**raw["sampler"], "n_startup_trials": min(raw["sampler"].get("n_startup_trials", 10),
                                                                   FEW_KNOBS_STARTUP)}
    if "n_startup_trials" in shaped["pruner"]:
        shaped["pruner"]["n_startup_trials"] = min(shaped["pruner"]["n_startup_trials"], FEW_KNOBS_STARTUP)
    return shaped


def _searched(raw: dict[str, Any]) -> int:
    return sum(1 for knob in raw["search"].values() if isinstance(knob, dict))


def _duration(seconds: float) -> str:
    """``40 s``, ``3.5 min``, ``59 min``, ``2.3 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe(sizing: Sizing) -> str:
    """``12 trials, about 3.5 min here with 2 worker(s) (a trial: ~35 s)``."""
    return (f"{sizing.n_trials} trials, about {_duration(sizing.seconds)} here with {sizing.workers} worker(s) "
            f"(a trial: ~{sizing.trial_seconds:.0f} s)")
