"""Warm starts: a new study begins with what an earlier one learned.

``warm_start: {study: OLD}`` in a spec, or ``searcher launch NEW --warm-start OLD
[--from-storage URL]``, does this once, while the study is created and before any trial runs:

- the old study's top configurations (``ranking.ranked``) that fit the new space are enqueued
  after the baselines, before any sampled trial: real trials of the new study, counted
  against its budget and marked ``warm_start_top``;
- the old study's own finished trials (COMPLETE and PRUNED) that fit are added with
  ``study.add_trials`` as history with the new space's distributions: TPE learns from them
  (pruned ones tell it where not to go) and its random start-up phase is over once enough are
  complete. They are marked ``warm_start_from`` and are never this study's results: the
  budget, ranking, status, report and export leave them out (``ranking.own_trials``);
- their learning curves come along only when both studies train on the same data (equal
  ``data`` section and split seed): the median pruner compares a new trial's curve with the
  complete trials' curves epoch by epoch, and a curve measured on other data would prune
  (or spare) wrongly. Without curves, trials still carry their values.

A trial *fits* when the new space can produce its configuration: every knob value it trained
with (from the old study's stored spec) is one the new space fixes or can sample
(``distribution._contains``). What was carried and left out, and why, is stored in the study
(``warm_start``) and shown by ``launch``; a second launch of the same study does nothing more.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from searcher import ranking, stored
from searcher.errors import StorageError, UserError
from searcher.space import baseline_params, suggest_values
from searcher.spec import StudySpec, WarmStartSpec, objective_names
from searcher.storage import mask_url, normalize_url, open_storage

FIELD = "warm_start.study"  # named in every refusal (launch --warm-start sets it)
TOP_AT_MOST = 5
KEPT_ATTRS = (stored.EPOCHS, stored.BEST_EPOCH, stored.N_PARAMS, stored.MODEL_BYTES, stored.LATENCY_B1,
              stored.SEC_PER_EPOCH, stored.VAL_LOSS_AT_BEST)


def with_flags(spec: StudySpec, study: str | None, storage: str | None) -> StudySpec:
    """The spec with ``--warm-start STUDY [--from-storage URL]`` in place of its ``warm_start``."""
    if study is None:
        if storage is not None:
            raise UserError("--from-storage: names where the --warm-start study is; give --warm-start OLD too")
        return spec
    return spec.model_copy(update={"warm_start": WarmStartSpec(study=study, storage=storage)})


@dataclass
class _Plan:
    """What a warm start adds: history trials, configurations to enqueue, and what it left out."""

    history: list[FrozenTrial]
    top: list[tuple[int, dict[str, Any]]]  # (old trial number, new params)
    left_out: Counter[str]
    examples: dict[str, list[Any]]
    curves: bool


def carry(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage) -> dict[str, Any] | None:
    """Warm-start ``study`` from ``spec.warm_start`` unless it was already; return the stored record
    (``describe`` says it in words), or None without a warm start.

    Call it under the study's budget lock, after the baselines are enqueued (a history trial
    with a baseline's params would make ``enqueue_trial(skip_if_exists=True)`` skip it).
    Raises UserError when the old study is missing or optimizes something else, or when this
    study has run trials without a warm start.
    """
    ws = spec.warm_start
    if ws is None:
        return None
    where = mask_url(ws.storage) if ws.storage else None
    done = study.user_attrs.get(stored.WARM_START)
    if done:
        if (done.get("study"), done.get("storage")) != (ws.study, where):
            raise UserError(f"{FIELD}: study {study.study_name!r} was warm-started from {_name(done)} already; "
                            f"it cannot also start from {_name({'study': ws.study, 'storage': where})}")
        return done
    if ws.storage is None and ws.study == study.study_name:
        raise UserError(f"{FIELD}: a study cannot warm-start from itself ({ws.study!r})")
    trials = study.get_trials(deepcopy=False)
    started = [t for t in trials if t.state != TrialState.WAITING and not stored.is_carried(t)]
    if started:
        raise UserError(f"{FIELD}: study {study.study_name!r} has run {len(started)} trial(s) already; a warm start "
                        f"is for a study that has run none (launch under another --name)")
    old = _load_old(ws, storage)
    _check_same_goal(old, spec)
    budget = stored.budget(study) or spec.budget.n_trials
    plan = _plan(old, spec, top=ws.top if ws.top is not None else min(TOP_AT_MOST, budget // 4))
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for number, params in plan.top:  # before the history: skip_if_exists would find the old trial there
        study.enqueue_trial(params, user_attrs={stored.WARM_TOP: {"study": ws.study, "trial": number}},
                            skip_if_exists=True)  # a top configuration that is also a baseline runs once
    enqueued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - waiting
    # A carry cut short (a lost database) left some history behind: the next launch adds the rest.
    there = {(t.user_attrs[stored.CARRIED]["study"], t.user_attrs[stored.CARRIED]["trial"]) for t in trials
             if stored.is_carried(t)}
    study.add_trials(t for t in plan.history if (ws.study, t.user_attrs[stored.CARRIED]["trial"]) not in there)
    record = {"study": ws.study, "storage": where, "history": len(plan.history), "enqueued": enqueued,
              "curves": plan.curves, "left_out": dict(plan.left_out),
              "examples": {k: v[:3] for k, v in plan.examples.items()}}
    study.set_user_attr(stored.WARM_START, record)
    return record


def describe(record: dict[str, Any]) -> str:
    """``warm start from 'old': 31 finished trials carried as history (with their curves: same data),
    5 of its best configurations enqueued first; 9 left out: 6 lr outside the new space ...``."""
    curves = "with their curves: same data" if record.get("curves") else "without curves: the data differ"
    line = (f"warm start from {_name(record)}: {record['history']} finished trial(s) carried as history "
            f"({curves}; not counted in the budget or results), {record['enqueued']} of its best configuration(s) "
            f"enqueued first")
    left = record.get("left_out") or {}
    if left:
        examples = record.get("examples") or {}
        parts = [f"{n} {reason}" + (f" (e.g. {', '.join(map(_short, examples[reason]))})" if examples.get(reason) else "")
                 for reason, n in sorted(left.items(), key=lambda kv: -kv[1])]
        line += f"; {sum(left.values())} left out: " + "; ".join(parts)
    return line


def _name(record: dict[str, Any]) -> str:
    return repr(record["study"]) + (f" in {record['storage']}" if record.get("storage") else "")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _load_old(ws: WarmStartSpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    if ws.storage is not None:
        try:
            storage = open_storage(normalize_url(ws.storage), create=False)
        except StorageError as e:
            raise StorageError(f"warm_start.storage (--from-storage): {e}") from None
    try:
        return optuna.load_study(study_name=ws.study, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        where = f" in {mask_url(ws.storage)}" if ws.storage else ""
        raise UserError(f"{FIELD}: no study {ws.study!r}{where} (studies there: {', '.join(names) or 'none'})") from None


def _check_same_goal(old: optuna.Study, spec: StudySpec) -> None:
    """Refuse an old study whose values mean something else: other objectives or directions."""
    have = ranking.goal(old)
    want = ranking.StudyGoal(names=objective_names(spec),
                             maximize=tuple(d == "maximize" for d in [spec.training.direction]
                                            + ["minimize"] * (len(objective_names(spec)) - 1)))
    if have != want:
        raise UserError(f"{FIELD}: {old.study_name!r} optimizes {have.describe()}, this study {want.describe()}; "
                        f"a warm start needs the same metric and direction")


def _plan(old: optuna.Study, spec: StudySpec, *, top: int) -> _Plan:
    old_spec = _stored_spec(old)
    curves = old_spec is not None and (old_spec.data, old_spec.split_seed) == (spec.data, spec.split_seed)
    limits = spec.constraints.limits() if spec.constraints else {}
    left_out, examples = Counter(), {}
    history, fits = [], {}
    for t in ranking.own_trials(old, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        fit = _fit(t, old_spec, spec)
        constraints = ranking.violations(limits, ranking.figures_of(t)) if limits else {}
        if t.user_attrs.get(stored.INFEASIBLE) and not any(v > 0 for v in constraints.values()):
            fit = _Unfit("not trained in the old study (over its constraints.max_params)")
        if isinstance(fit, _Unfit):
            left_out[fit.reason] += 1
            if fit.example is not None:
                examples.setdefault(fit.reason, []).append(fit.example)
            continue
        params, distributions = fit
        fits[t.number] = (params, constraints)
        history.append(optuna.trial.create_trial(
            state=t.state, values=t.values if t.state == TrialState.COMPLETE else None,
            params=params, distributions=distributions,
            intermediate_values=dict(t.intermediate_values) if curves else None,
            user_attrs={stored.CARRIED: {"study": old.study_name, "trial": t.number},
                        **{k: t.user_attrs[k] for k in KEPT_ATTRS if k in t.user_attrs}},
            constraints=constraints or None,
        ))
    best = [(t.number, fits[t.number][0]) for t in ranking.ranked(old)
            if t.number in fits and all(v <= 0 for v in fits[t.number][1].values())]
    return _Plan(history=history, top=best[:top], left_out=left_out, examples=examples, curves=curves)


def _stored_spec(old: optuna.Study) -> StudySpec | None:
    """The old study's spec; None for a study searcher did not make (its params are taken as they are)."""
    try:
        return stored.stored_spec(old)
    except UserError:
        return None


@dataclass(frozen=True)
class _Unfit:
    """Why a trial does not fit the new space (grouped by this text), and a value to show."""

    reason: str
    example: Any = None


def _fit(trial: FrozenTrial, old_spec: StudySpec | None,
         spec: StudySpec) -> tuple[dict[str, Any], dict[str, BaseDistribution]] | _Unfit:
    """The trial's params and distributions in the new space, or why it does not fit."""
    old_values = None
    wanted = dict(trial.params)
    if old_spec is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FixedTrial warns on a value outside the old space: not ours to say
                old_values = suggest_values(optuna.trial.FixedTrial(trial.params), old_spec)
        except ValueError:
            return _Unfit("params that the old study's own spec does not produce")
        wanted = baseline_params(spec, {k: list(v) if isinstance(v, tuple) else v for k, v in old_values.items()
                                        if hasattr(spec.search, k)})
    recorder = _Recorder(wanted)
    try:
        new_values = suggest_values(recorder, spec)
    except _Missing as e:
        return _Unfit(f"no {e.name} in the old trial")
    if recorder.outside:
        name, value, distribution = recorder.outside[0]
        return _Unfit(f"{name} outside the new space {_range(distribution)}", value)
    for knob, value in new_values.items():
        if old_values is not None and not _same(old_values.get(knob, _MISSING), value):
            return _Unfit(f"{knob} fixed at {_short(value)} in the new space", old_values.get(knob))
    return recorder.params, recorder.distributions


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _range(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return "{" + ", ".join(map(str, d.choices)) + "}"
    return f"[{_short(d.low)}, {_short(d.high)}]"


class _Missing(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Recorder:
    """A trial that answers each suggest from given values and records the new space's
    distribution, and whether the value lies in it."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}
        self.outside: list[tuple[str, Any, BaseDistribution]] = []

    def _take(self, name: str, distribution: BaseDistribution) -> Any:
        if name not in self.values:
            raise _Missing(name)
        value = self.values[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):  # a categorical value that is not among the choices
            inside = False
        if not inside:
            self.outside.append((name, value, distribution))
        self.params[name], self.distributions[name] = value, distribution
        return value

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name, CategoricalDistribution(choices))

    def suggest_float(self, name: str, low: float, high: float, *, step: Any = None, log: bool = False) -> float:
        return self._take(name, FloatDistribution(low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._take(name, IntDistribution(low, high, step=step, log=log))
