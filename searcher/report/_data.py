"""study -> ReportData: the plain numbers the report shows, tested directly (no plotly here)."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from searcher import ranking, stored
from searcher.errors import UserError
from searcher.report import _tradeoff

log = logging.getLogger(__name__)

TOP_K = 10  # rows in the top-trials table
STATES = ("complete", "pruned", "fail", "running", "waiting")


@dataclass(frozen=True)
class TrialRow:
    """One trial, flattened from what the search core writes."""

    number: int
    state: str  # one of STATES
    value: float | None  # objective value of a complete trial (finite), else None
    params: Mapping[str, Any]  # searched knobs only
    config: Mapping[str, Any]  # full resolved config, fixed knobs too; {} if absent
    baseline: str | None = None
    n_params: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    sec_per_epoch: float | None = None
    duration_s: float | None = None
    curve: tuple[tuple[int, float], ...] = ()  # (0-based epoch, validation metric)
    fail_reason: str | None = None
    feasible: bool = True  # within the spec's constraints (an infeasible trial is never best)
    cv_values: tuple[float, ...] = ()  # data.cv_folds: each fold's value (``value`` is their mean)

    def knob(self, key: str) -> Any:
        """A model knob from config["model"], else from the trial params (``learning_rate`` is ``lr``)."""
        model = self.config.get("model")
        if isinstance(model, Mapping) and model.get(key) is not None:
            return model[key]
        if key == "l2" and "l2" not in self.params and self.params.get("use_l2") is False:
            return 0.0
        return self.params.get("lr" if key == "learning_rate" else key)


@dataclass(frozen=True)
class BaselineRow:
    name: str
    number: int
    state: str
    value: float | None
    gain: float | None  # best.value - value in metric units; negative is better when minimizing


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, as plain numbers gathered from one study (``gather``):
    the sections and figures draw from it alone, so tests check it without plotly."""

    study_name: str
    dataset: str
    model_kind: str
    metric: str
    maximize: bool
    spec_hash: str
    budget: int | None
    counts: Mapping[str, int]  # every name in STATES -> number of trials
    total_train_s: float  # sum of the durations of finished trials
    best: TrialRow
    baselines: tuple[BaselineRow, ...]
    top: tuple[TrialRow, ...]  # complete trials, best first
    trials: tuple[TrialRow, ...]  # all trials, by number
    param_kinds: Mapping[str, str]  # searched param -> "log", "float", "int", "bool" or "cat"
    importances: Mapping[str, float]  # empty when they cannot be computed
    fail_reasons: Mapping[str, int]
    figures: tuple[str, ...]  # ids of the figures render_html draws, in page order
    notes: Mapping[str, str]  # figure id -> why it is not drawn
    confirmed: tuple[Mapping[str, Any], ...] = ()  # `searcher confirm`'s ranking, best first
    importance_note: str | None = None  # why `importances` is empty
    data: Mapping[str, Any] | None = None  # rows, features, classes and preprocessing (data.SearchData.summary)
    tradeoff: _tradeoff.Tradeoff | None = None  # metric against cost: the Pareto front and the cheap picks
    objectives: tuple[str, ...] = ()  # the metric, then the cost in a two-objective study
    spec_name: str | None = None  # the spec the study was created from (its name can differ: --name, --seed)
    seed: int | None = None
    split_seed: int | None = None  # the validation split's seed
    references: Mapping[str, Any] | None = None  # boosted trees and logistic regression (reference.evaluate)
    tensorboard: str | None = None  # the folder of the study's TensorBoard logs

    @property
    def complete(self) -> tuple[TrialRow, ...]:
        """Complete trials within the constraints (infeasible ones show only in the trade-off section)."""
        return tuple(t for t in self.trials if t.value is not None and t.feasible)


def gather(study: optuna.Study, *, top_k: int = TOP_K) -> ReportData:
    """Everything but the figure plan (figures=(), notes={}); raise UserError when no trial is complete."""
    name = study.study_name
    spec = stored.spec_dict(study)
    trials = ranking.own_trials(study)
    rows = tuple(_row(t) for t in trials)
    counts = Counter(r.state for r in rows)
    complete = [r for r in rows if r.value is not None and r.feasible]
    if not complete:
        if ranking.infeasible(trials):  # trials finished, but every one is over a constraint
            raise UserError(ranking.no_feasible_message(study))
        seen = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]) or "no trials"
        raise UserError(f"study '{name}' has no complete trials yet ({seen}); run searcher launch {name} first")
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    place = {t.number: i for i, t in enumerate(ranking.ranked(study))}  # the one ranking export and status use
    top = tuple(sorted(complete, key=lambda r: place.get(r.number, len(place)))[:top_k])
    best, kinds, budget = top[0], _param_kinds(trials), stored.budget(study)
    importances, importance_note = _importances(study, complete, kinds)
    return ReportData(
        study_name=name,
        dataset=str(_get(spec, "data", "dataset") or _get(best.config, "data", "dataset") or "?"),
        model_kind=str(_get(spec, "model", "kind") or best.knob("kind") or "?"),
        metric=str(_get(spec, "training", "metric") or _get(best.config, "training", "metric") or "value"),
        maximize=maximize,
        spec_hash=str(study.user_attrs.get(stored.SPEC_HASH, "?")),
        budget=budget if isinstance(budget, int) else None,
        counts={s: counts[s] for s in STATES},
        total_train_s=sum(r.duration_s for r in rows if r.duration_s is not None),
        best=best,
        baselines=tuple(BaselineRow(r.baseline, r.number, r.state, r.value,
                                    None if r.value is None else best.value - r.value) for r in rows if r.baseline),
        top=top,
        trials=rows,
        param_kinds=kinds,
        importances=importances,
        fail_reasons=dict(Counter(r.fail_reason or stored.LOST_WORKER for r in rows if r.state == "fail")),
        figures=(),
        notes={},
        confirmed=tuple(study.user_attrs.get(stored.CONFIRMED) or ()),
        importance_note=importance_note,
        data=study.user_attrs.get(stored.DATA),
        references=stored.references(study),
        tensorboard=stored.tensorboard_dir(study),
        tradeoff=_tradeoff.collect(study),
        objectives=ranking.goal(study).names,
        spec_name=str(spec["name"]) if spec.get("name") else None,
        seed=spec.get("seed") if isinstance(spec.get("seed"), int) else None,
        split_seed=next((s for s in (_get(spec, "data", "split_seed"), spec.get("seed")) if isinstance(s, int)), None),
    )


def key(v: Any) -> Any:
    """A value to compare or count by: floats rounded, so 0.1 + 0.2 and 0.3 are one value."""
    return round(v, 12) if isinstance(v, float) else v


def varying(rows: list[TrialRow] | tuple[TrialRow, ...], kinds: Mapping[str, str], *,
            require_all: bool = True) -> list[str]:
    """Searched params taking more than one value (and, with require_all, set in every row)."""
    return [p for p in kinds if (not require_all or all(p in r.params for r in rows))
            and len({key(r.params.get(p)) for r in rows}) > 1]


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, Mapping) else None
    return d


def _row(t: FrozenTrial) -> TrialRow:
    ua = t.user_attrs
    value = t.values[0] if t.state == TrialState.COMPLETE and t.values else None  # the metric, in any study
    finite = value is not None and math.isfinite(value)
    # A two-objective study has no intermediate values: its curve is the `curve` user attr.
    curve = t.intermediate_values or dict(enumerate(ua.get(stored.CURVE) or ()))
    num = lambda k, typ: typ(ua[k]) if isinstance(ua.get(k), (int, float)) else None  # noqa: E731
    return TrialRow(
        number=t.number, state=t.state.name.lower(), value=value if finite else None, params=dict(t.params),
        config=stored.config_of(t) or {},
        baseline=str(ua[stored.BASELINE]) if ua.get(stored.BASELINE) else None,
        n_params=num(stored.N_PARAMS, int), epochs=num(stored.EPOCHS, int), best_epoch=num(stored.BEST_EPOCH, int),
        sec_per_epoch=num(stored.SEC_PER_EPOCH, float),
        duration_s=t.duration.total_seconds() if t.duration is not None else None,
        curve=tuple(sorted((s, v) for s, v in curve.items() if math.isfinite(v))),
        fail_reason=str(ua[stored.FAIL_REASON]) if ua.get(stored.FAIL_REASON) else None,
        feasible=ranking.is_feasible(t),
        cv_values=tuple(float(v) for v in ua.get(stored.CV_VALUES) or ()),
    )


def _param_kinds(trials: list[FrozenTrial]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                kind = "bool" if all(isinstance(c, bool) for c in dist.choices) else "cat"
            else:
                kind = "log" if dist.log else "float" if isinstance(dist, FloatDistribution) else "int"
            kinds.setdefault(name, kind)
    return kinds


def _metric_target(study: optuna.Study) -> Any:
    """The importance target of a two-objective study: its metric, negated when maximized (PED-ANOVA
    minimizes a target); None (the study's own value) with one objective."""
    goal = ranking.goal(study)
    if not goal.multi:
        return None
    return (lambda t: -ranking.metric_value(t)) if goal.maximize[0] else ranking.metric_value


def _own_study(study: optuna.Study) -> optuna.Study:
    """The study, or an in-memory copy of its own finished trials when a warm start carried history in
    (importances are this study's result; Optuna's evaluator reads every trial of the study it gets)."""
    trials = study.get_trials(deepcopy=False)
    own = ranking.own_trials(study)
    if len(own) == len(trials):
        return study
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(t for t in own if t.state.is_finished())
    return copy


def _importances(study: optuna.Study, complete: list[TrialRow], kinds: Mapping[str, str]) -> tuple[dict, str | None]:
    if len(complete) < 2:
        return {}, f"needs at least 2 complete trials (have {len(complete)})"
    if not varying(complete, kinds, require_all=False):
        return {}, "no searched parameter varies across the complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns on small samples; the note below says it
            imp = optuna.importance.get_param_importances(_own_study(study), target=_metric_target(study))
    except (ValueError, RuntimeError) as e:
        log.warning("parameter importance failed: %s", e)
        return {}, f"could not be computed: {e}"
    if not any(v > 0 for v in imp.values()):
        return {}, f"all zero: {len(complete)} complete trials are too few to tell the parameters apart"
    return dict(imp), None
