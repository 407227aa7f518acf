"""Which trials count, and which to ship: feasible trials, the best, the Pareto front, picks by cost.

A trial over a spec constraint is *infeasible* (Optuna's ``trial.constraints``, set by the
objective): it is never "best", in any command. The first objective is always the metric;
a study's cost figures are user attrs (``searcher.cost``), so a single-objective study has
an accuracy-against-cost front too. Everything here reads stored trials only (no TensorFlow).

A *point* of the metric is 0.01 of it: a percentage point of accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from searcher import stored
from searcher.errors import UserError
from searcher.spec import COST_OBJECTIVES as COSTS

POINT = 0.01
# Constraint -> the cost it limits.
CONSTRAINED_COST = {"max_params": "n_params", "max_latency_ms": "latency_ms", "max_model_mb": "model_mb"}
COST_LABELS = {"n_params": "parameters", "latency_ms": "ms per example at batch 1",
               "sec_per_epoch": "seconds per epoch", "model_mb": "model file MB"}


def cost_of(trial: FrozenTrial | optuna.Trial, name: str) -> float | None:
    """A trial's cost figure by cost name (``latency_ms`` is per example at batch 1), or None."""
    ua = trial.user_attrs
    raw = {"n_params": ua.get(stored.N_PARAMS), "latency_ms": ua.get(stored.LATENCY_B1), "sec_per_epoch": ua.get(stored.SEC_PER_EPOCH),
           "model_mb": ua[stored.MODEL_BYTES] / 1e6 if isinstance(ua.get(stored.MODEL_BYTES), (int, float)) else None}[name]
    return float(raw) if isinstance(raw, (int, float)) else None


def violations(limits: dict[str, float], figures: dict[str, float | None]) -> dict[str, float]:
    """Optuna constraint values: how far over its limit each figure is, relative (<= 0 is feasible).

    Relative, so that a sampler adding up violations weighs "twice the parameters" and
    "twice the latency" alike.
    """
    out = {}
    for name, limit in limits.items():
        value = figures.get(CONSTRAINED_COST[name])
        if value is not None:
            out[name] = value / limit - 1.0
    return out


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def metric_value(trial: FrozenTrial) -> float:
    """The first objective (the metric) of a complete trial, in single- and multi-objective studies."""
    return trial.values[0]


def against_best(best: float, value: float, *, maximize: bool, points: bool = False) -> str:
    """The best trial's metric against another value (a baseline's), in words that do not depend
    on a sign convention: ``the best is 0.0163 lower`` (``points``: ``1.63 points``). Shown with
    ``better_direction``, so a reader of a loss knows that lower is the good side."""
    gap = best - value
    if gap == 0:
        return "the best is the same"
    amount = f"{abs(gap) / POINT:.2f} points" if points else f"{abs(gap):.4f}"
    return f"the best is {amount} {'higher' if gap > 0 else 'lower'}"


def better_direction(maximize: bool) -> str:
    return "higher is better" if maximize else "lower is better"


@dataclass(frozen=True)
class StudyGoal:
    """What a stored study optimizes: objective names and directions, the metric first."""

    names: tuple[str, ...]
    maximize: tuple[bool, ...]

    @property
    def metric(self) -> str:
        return self.names[0]

    @property
    def multi(self) -> bool:
        return len(self.names) > 1

    @property
    def cost(self) -> str | None:
        return self.names[1] if self.multi else None

    def describe(self) -> str:
        return ", ".join(f"{n} ({'maximize' if m else 'minimize'})" for n, m in zip(self.names, self.maximize))


def goal(study: optuna.Study) -> StudyGoal:
    maximize = tuple(d == StudyDirection.MAXIMIZE for d in study.directions)
    names = study.metric_names or ["value"] + [f"objective {i}" for i in range(1, len(maximize))]
    return StudyGoal(names=tuple(names), maximize=maximize)


def own_trials(study: optuna.Study, *, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's own trials: not those a warm start carried in as history (``stored.CARRIED``),
    which its sampler learns from but which are never its results. Use it wherever trials are shown
    or counted; Optuna's sampler and pruner read ``study.get_trials`` and see both."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if not stored.is_carried(t)]


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible complete trials, best metric first; ties: the cheaper by the second objective (so
    the first is on the Pareto front), then the lower validation loss (many trials reach the same
    accuracy on a small validation split), then the earlier trial."""
    return rank(own_trials(study, states=(TrialState.COMPLETE,)), maximize=goal(study).maximize)


def rank(trials: Iterable[FrozenTrial], *, maximize: Sequence[bool]) -> list[FrozenTrial]:
    """``ranked`` on given trials: the feasible complete ones, best first."""

    def order(t: FrozenTrial) -> tuple:
        loss = t.user_attrs.get(stored.VAL_LOSS_AT_BEST)
        return (*(-v if up else v for v, up in zip(t.values, maximize)),
                loss if isinstance(loss, (int, float)) else float("inf"), t.number)

    return sorted((t for t in trials if t.state == TrialState.COMPLETE and is_feasible(t)), key=order)


def infeasible(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials over a constraint (rejected before training, or measured over it after)."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not is_feasible(t)]


def front(trials: Sequence[FrozenTrial], *, cost: str, maximize: bool) -> list[FrozenTrial]:
    """The non-dominated trials by (metric, ``cost``): none is both better and cheaper. Cheapest first.

    ``trials`` are feasible complete trials (``ranked``); those without the cost figure are left out.
    """
    known = [t for t in trials if cost_of(t, cost) is not None]
    # Best metric first, then cheapest; a trial joins the front only if it is cheaper than all before it.
    known.sort(key=lambda t: (-metric_value(t) if maximize else metric_value(t), cost_of(t, cost), t.number))
    out, cheapest = [], float("inf")
    for t in known:
        if cost_of(t, cost) < cheapest:
            out.append(t)
            cheapest = cost_of(t, cost)
    return out[::-1]


def within(trials: Sequence[FrozenTrial], points: float, *, maximize: bool) -> list[FrozenTrial]:
    """The trials (ranked, best first) whose metric is at most ``points`` points worse than the first's."""
    if not trials:
        return []
    best, slack = metric_value(trials[0]), points * POINT + 1e-12
    return [t for t in trials if (best - metric_value(t) if maximize else metric_value(t) - best) <= slack]


def cheapest(trials: Sequence[FrozenTrial], cost: str) -> FrozenTrial | None:
    """The trial with the lowest ``cost`` (ties: the better metric, as ``trials`` are ranked)."""
    known = [t for t in trials if cost_of(t, cost) is not None]
    return min(known, key=lambda t: cost_of(t, cost)) if known else None


@dataclass(frozen=True)
class PickByCost:
    """How ``export`` chooses: the flags, validated at the edge."""

    smallest_within: float | None = None  # points of the metric below the best feasible trial
    max_params: int | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--smallest-within", self.smallest_within), ("--max-params", self.max_params),
                            ("--max-latency-ms", self.max_latency_ms)):
            if value is not None and (value < 0 if flag == "--smallest-within" else value <= 0):
                rule = ">= 0" if flag == "--smallest-within" else "> 0"
                raise UserError(f"{flag}: must be {rule}, got {value}")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.smallest_within, self.max_params, self.max_latency_ms))


def pick_by_cost(study: optuna.Study, pick: PickByCost) -> tuple[FrozenTrial, str]:
    """The trial ``pick`` asks for among the feasible ones, and a phrase saying how it was chosen."""
    g = goal(study)
    pool = ranked(study)
    if not pool:
        raise UserError(no_feasible_message(study))
    best = pool[0]
    limits = []
    if pick.max_params is not None:
        pool = [t for t in pool if (cost_of(t, "n_params") or float("inf")) <= pick.max_params]
        limits.append(f"n_params <= {pick.max_params:,}")
    if pick.max_latency_ms is not None:
        pool = [t for t in pool if (cost_of(t, "latency_ms") or float("inf")) <= pick.max_latency_ms]
        limits.append(f"latency_ms_b1 <= {pick.max_latency_ms:g}")
    under = f" with {' and '.join(limits)}" if limits else ""
    if pick.smallest_within is not None:
        near = [t for t in pool if t in within(ranked(study), pick.smallest_within, maximize=g.maximize[0])]
        chosen = cheapest(near, "n_params")
        if chosen is None:
            raise UserError(f"--smallest-within: no feasible trial{under} is within {_points(pick.smallest_within)} "
                            f"of the best {g.metric} {metric_value(best):.4f} (trial {best.number})"
                            + (f"; the best{under} is trial {pool[0].number} at {metric_value(pool[0]):.4f}"
                               if pool else ""))
        return chosen, (f"smallest ({cost_of(chosen, 'n_params'):,.0f} parameters){under} within "
                        f"{_points(pick.smallest_within)} of the best {g.metric} {metric_value(best):.4f} "
                        f"(trial {best.number})")
    if not pool:
        flag, cost = ("--max-params", "n_params") if pick.max_params is not None else ("--max-latency-ms", "latency_ms")
        raise UserError(f"{flag}: no feasible complete trial{under}; {_cheapest_text(ranked(study), cost)}")
    return pool[0], f"best {g.metric}{under}"


def _cheapest_text(trials: Sequence[FrozenTrial], cost: str) -> str:
    t = cheapest(trials, cost)
    if t is None:
        return f"no trial records {cost}"
    if cost == "n_params":
        return f"the smallest has {cost_of(t, cost):,.0f} parameters (trial {t.number})"
    return f"the fastest takes {cost_of(t, cost):.4g} ms per example (trial {t.number})"


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def no_feasible_message(study: optuna.Study) -> str:
    """Why there is no best trial: none finished, or none within the constraints (and what to do)."""
    trials = own_trials(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    over = infeasible(trials)
    name = study.study_name
    if not over:  # callers ask only when no feasible trial completed: so none completed at all
        return f"study {name!r} has no complete trials yet; run `searcher launch {name}`"
    untrained = [t for t in over if t.user_attrs.get(stored.INFEASIBLE)]  # over max_params: rejected before training
    smallest = cheapest(untrained, "n_params")
    among = f"all {len(complete)} complete one(s) among them" if complete else "none completed"
    how = (f"; {len(untrained)} rejected before training (the smallest had "
           f"{cost_of(smallest, 'n_params'):,.0f} parameters, trial {smallest.number})") if smallest else ""
    return (f"study {name!r} has no feasible trial: {len(over)} finished trial(s) over a constraint "
            f"({constraint_text(study)}), {among}{how}; loosen the constraint, narrow the search space, "
            f"or give it more trials (searcher launch {name} --trials N)")


def constraint_text(study: optuna.Study) -> str:
    """The study's constraints as stored with its spec, e.g. ``max_params 20,000``."""
    limits = stored.spec_dict(study).get("constraints") or {}
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:g}" for k, v in limits.items()) or "none stored"


def figures_of(trial: FrozenTrial) -> dict[str, Any]:
    """Every cost figure of a trial by cost name (None where not recorded)."""
    return {name: cost_of(trial, name) for name in COSTS}
