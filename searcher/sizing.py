"""``searcher init``'s budget: how many trials fit the minutes asked on this machine, and the
time they really take.

When the minutes cannot hold the fewest trials worth running, the study is shaped to fit, in
the order that loses least: first fewer epochs per trial (short trials still rank
configurations, as successive halving relies on), then a stratified sample of the fit split
for the search (``data.search_rows``; ``retrain`` still trains on all of it), then fewer knobs
searched (a handful of knobs needs fewer random start-up trials). When even that does not
fit, the shaped study is written with its fewest trials and the one line says the minutes it
needs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from searcher.data import search_sizes

MAX_TRIALS = 300
# The fewest trials worth running: the full space's 10 random start-up trials, then a few that
# TPE guides; a handful of knobs makes do with 4 start-up trials.
MIN_TRIALS, MIN_TRIALS_FEW_KNOBS = 12, 8
FEW_KNOBS_STARTUP = 4
MIN_EPOCHS = 5  # below this, the pruner's warm-up and early stopping leave nothing to compare
# The smallest search sample init offers: a few hundred rows per class still rank configurations
# (their curves separate within a few epochs); fewer, and the best of the sample need not be
# the best on all the data.
MIN_ROWS_PER_CLASS = 300
_SAMPLE_STEP = 0.75  # each smaller sample offered keeps this share of the rows of the one before
# A validation row costs one forward pass, a training row a forward and a backward pass (~3x).
_VALIDATION_ROW_COST = 1 / 3
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

    epoch_s: float  # a steady epoch on fit_rows and val_rows
    first_epoch_extra_s: float  # building and tracing the model: once per model
    folds: int = 1  # a cross-validated trial trains one model per fold
    fit_rows: int = 0  # the rows epoch_s was measured for; 0: unknown, no search sample offered
    val_rows: int = 0
    epoch_fixed_s: float = 0.0  # the part of an epoch a smaller sample does not shorten

    def trial_seconds(self, raw: dict[str, Any]) -> float:
        """Expected seconds of one trial of the spec ``raw``: pruning and early stopping end most
        trials early, but none before the pruner's warm-up is over."""
        max_epochs = raw["training"]["max_epochs"]
        warmup = raw["pruner"].get("n_warmup_steps", 0)
        epochs = min(max_epochs, max(_EPOCH_SHARE * max_epochs, warmup + 2))
        return self.folds * (self.epoch_seconds(raw) * epochs + self.first_epoch_extra_s) + _PER_TRIAL_OVERHEAD_S

    def epoch_seconds(self, raw: dict[str, Any]) -> float:
        """A steady epoch of the spec ``raw``: shorter in proportion to its search sample's rows."""
        rows = raw["data"].get("search_rows")
        if not rows or not self.fit_rows:
            return self.epoch_s
        share = _row_cost(*search_sizes(self.fit_rows, self.val_rows, rows)) / _row_cost(self.fit_rows, self.val_rows)
        return self.epoch_fixed_s + (self.epoch_s - self.epoch_fixed_s) * share

    def calibrated(self, sample: TrialCost) -> TrialCost:
        """This cost with its fixed part per epoch, from ``sample``: the same trial measured on
        fewer rows. A sample that was not faster (a busy moment) leaves every epoch at full cost."""
        whole, part = _row_cost(self.fit_rows, self.val_rows), _row_cost(sample.fit_rows, sample.val_rows)
        per_row = max(0.0, (self.epoch_s - sample.epoch_s) / (whole - part)) if whole > part else 0.0
        fixed = min(self.epoch_s, max(0.0, self.epoch_s - per_row * whole))
        return dataclasses.replace(self, epoch_fixed_s=fixed, first_epoch_extra_s=sample.first_epoch_extra_s)


def _row_cost(fit_rows: int, val_rows: int) -> float:
    return fit_rows + _VALIDATION_ROW_COST * val_rows


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


def size_budget(raw: dict[str, Any], cost: TrialCost, *, minutes: float, workers: int,
                classes: int = 0) -> Sizing:
    """The most trials of ``raw`` (at most MAX_TRIALS) that fit ``minutes`` with ``workers``;
    shape the study when not even the fewest worth running fit. ``classes``: the data's, for
    the smallest search sample (0: none is offered)."""
    available = minutes * 60 * workers * _HEADROOM
    full = cost.trial_seconds(raw)
    if available >= MIN_TRIALS * full:
        return _sized(raw, min(MAX_TRIALS, int(available / full)), full, workers)
    smallest = MIN_ROWS_PER_CLASS * classes
    samples = _sample_sizes(cost.fit_rows, smallest) if classes and not raw["data"].get("cv_folds") else []
    shapes = list(_shapes(raw, samples, fit_rows=cost.fit_rows))
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


def _shapes(raw: dict[str, Any], samples: list[int], *, fit_rows: int):
    """Shaped copies of ``raw``, the mildest first, each with its fewest trials worth running and
    what it changed: on the full space fewer epochs, then at the fewest epochs smaller search
    samples (``samples`` rows); then the same on fewer knobs."""
    yield from _smaller(raw, samples, fit_rows=fit_rows, least=MIN_TRIALS, changes=(),
                        first=raw["training"]["max_epochs"] - 1)
    few = _with_few_knobs(raw)
    if few is None:
        return
    names = ", ".join(name for name, knob in few["search"].items() if isinstance(knob, dict))
    knobs = f"{_searched(few)} of {_searched(raw)} knobs searched ({names})"
    yield from _smaller(few, samples, fit_rows=fit_rows, least=MIN_TRIALS_FEW_KNOBS, changes=(knobs,),
                        first=raw["training"]["max_epochs"])


def _smaller(raw: dict[str, Any], samples: list[int], *, fit_rows: int, least: int, changes: tuple[str, ...],
             first: int):
    """``raw`` with ``first`` epochs down to MIN_EPOCHS, then at MIN_EPOCHS on each of ``samples``."""
    max_epochs = raw["training"]["max_epochs"]
    for epochs in range(first, MIN_EPOCHS - 1, -1):
        epoch_change = (f"{epochs} epochs per trial (was {max_epochs})",) if epochs < max_epochs else ()
        yield _with_epochs(raw, epochs), least, (*epoch_change, *changes)
    shortest = _with_epochs(raw, MIN_EPOCHS)
    epoch_change = (f"{MIN_EPOCHS} epochs per trial (was {max_epochs})",) if MIN_EPOCHS < max_epochs else ()
    for rows in samples:
        sampled = copy.deepcopy(shortest)
        sampled["data"]["search_rows"] = rows
        yield sampled, least, (*epoch_change, f"the search trains on a sample of {rows} of the {fit_rows} fit rows "
                                              "(stratified; retrain trains on all)", *changes)


def _sample_sizes(fit_rows: int, smallest: int) -> list[int]:
    """Ever smaller search samples of ``fit_rows``, two significant digits, down to ``smallest``."""
    sizes: list[int] = []
    rows = fit_rows * _SAMPLE_STEP
    while rows > smallest:
        rounded = int(float(f"{rows:.2g}"))
        if rounded < fit_rows and rounded not in sizes:
            sizes.append(rounded)
        rows *= _SAMPLE_STEP
    return sizes + ([smallest] if 0 < smallest < fit_rows else [])


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
