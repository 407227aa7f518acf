"""What is happening in a study: a snapshot of its trials, drawn for the terminal or as JSON.

``launch`` redraws it live; ``searcher status`` prints it once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Group
from rich.table import Table
from rich.text import Text

from searcher import ranking, stored
from searcher.formatting import format_cost, format_cost_value, format_elapsed, format_params
from searcher.reference import describe as describe_references
from searcher.study import finished
from searcher.tensorboard import hint as tensorboard_hint

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class RunningTrial:
    number: int
    worker_pid: int | None
    worker_host: str | None
    elapsed_s: float
    epochs_reported: int


@dataclass(frozen=True)
class Snapshot:
    study: str
    direction: str
    n_trials: int | None
    counts: dict[str, int]
    fail_reasons: dict[str, int]
    best_value: float | None  # the best feasible trial's metric
    best_trial: int | None
    best_params: dict[str, Any]
    running: list[RunningTrial] = field(default_factory=list)
    train_seconds: float = 0.0
    objectives: list[str] = field(default_factory=list)  # the metric first; a cost second in a two-objective study
    best_cost: dict[str, Any] = field(default_factory=dict)  # the best trial's cost figures (ranking.COSTS)
    infeasible: int = 0  # finished trials over a constraint (never best)
    no_feasible: str | None = None  # why there is no best although trials completed
    front: list[dict[str, Any]] = field(default_factory=list)  # two objectives: the Pareto front, cheapest first
    references: dict[str, Any] = field(default_factory=dict)  # boosted trees and logistic regression (reference.py)
    baselines: list[dict[str, Any]] = field(default_factory=list)  # name, trial, state, value, infeasible
    tensorboard: str | None = None  # the folder of the study's TensorBoard logs

    @property
    def finished(self) -> int:
        return finished(Counter(self.counts))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished}


def take_snapshot(study: optuna.Study) -> Snapshot:
    """What ``status`` and the live view show: trials by state, failure reasons, the best feasible
    trial and its cost, infeasible and running trials, the Pareto front of two objectives."""
    trials = ranking.own_trials(study)
    counts = Counter(t.state.name for t in trials)
    reasons = Counter(stored.fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    now = dt.datetime.now()
    running = [
        RunningTrial(
            number=t.number,
            worker_pid=t.user_attrs.get(stored.WORKER_PID),
            worker_host=t.user_attrs.get(stored.WORKER_HOST),
            elapsed_s=round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else 0.0,
            epochs_reported=len(t.intermediate_values) or len(t.user_attrs.get(stored.CURVE, ())),
        )
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    goal, ranked = ranking.goal(study), ranking.ranked(study)
    best = ranked[0] if ranked else None
    on_front = ranking.front(ranked, cost=goal.cost, maximize=goal.maximize[0]) if goal.multi else []
    seconds = sum(t.duration.total_seconds() for t in trials if t.duration and t.state.is_finished())
    over = ranking.infeasible(trials)
    return Snapshot(
        study=study.study_name,
        direction=", ".join("maximize" if m else "minimize" for m in goal.maximize),
        n_trials=stored.budget(study),
        counts={s: counts.get(s, 0) for s in STATES},
        fail_reasons=dict(reasons),
        best_value=ranking.metric_value(best) if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        running=sorted(running, key=lambda r: r.number),
        train_seconds=round(seconds, 1),
        objectives=list(goal.names),
        best_cost=ranking.figures_of(best) if best else {},
        infeasible=len(over),
        no_feasible=ranking.no_feasible_message(study) if best is None and over else None,
        front=[{"trial": t.number, "values": list(t.values), **ranking.figures_of(t)} for t in on_front],
        references=stored.references(study) or {},
        baselines=[{"name": t.user_attrs[stored.BASELINE], "trial": t.number, "state": t.state.name,
                    "value": ranking.metric_value(t) if t.state == TrialState.COMPLETE else None,
                    "infeasible": t.user_attrs.get(stored.INFEASIBLE) or (not ranking.is_feasible(t))}
                   for t in trials if stored.BASELINE in t.user_attrs],
        tensorboard=stored.tensorboard_dir(study),
    )


def render(snapshot: Snapshot, *, elapsed_s: float | None = None, eta_s: float | None = None,
           workers: Table | None = None) -> Group:
    """The terminal view: counts, best so far, running trials, and optionally the workers."""
    c = snapshot.counts
    budget = f"{snapshot.finished}/{snapshot.n_trials}" if snapshot.n_trials else str(snapshot.finished)
    head = Text.assemble(
        (f"{snapshot.study}", "bold"), f"  finished {budget}  ",
        (f"complete {c['COMPLETE']}", "green"), "  ", (f"pruned {c['PRUNED']}", "yellow"), "  ",
        (f"failed {c['FAIL']}", "red"), "  ", (f"running {c['RUNNING']}", "cyan"),
        f"  waiting {c['WAITING']}",
    )
    if elapsed_s is not None:
        head.append(f"  elapsed {format_elapsed(elapsed_s)}")
    if eta_s is not None:
        head.append(f"  remaining ~{format_elapsed(eta_s)}")
    parts: list[Any] = [head]
    if snapshot.best_value is not None:
        label = "best feasible " if snapshot.infeasible else "best "
        parts.append(Text.assemble((label, "bold"), f"{snapshot.objectives[0] if snapshot.objectives else ''} "
                                   f"{snapshot.best_value:.4f} (trial {snapshot.best_trial}): ",
                                   (format_params(snapshot.best_params), "dim")))
        if cost := format_cost(snapshot.best_cost):
            parts.append(Text(f"  cost: {cost}", "dim"))
    elif snapshot.no_feasible:
        parts.append(Text(f"no best trial: {snapshot.no_feasible}", "red"))
    if references := describe_references(snapshot.references):
        parts.append(Text(f"references: {references}", "dim" if snapshot.best_value is None else ""))
    if snapshot.infeasible:
        parts.append(Text(f"infeasible (over a constraint, never best): {snapshot.infeasible}", "yellow"))
    parts += [Text(f"  {line}") for line in baseline_lines(snapshot)]
    if snapshot.front:
        names = snapshot.objectives
        rows = ", ".join(f"#{p['trial']} {p['values'][0]:.4f}/{format_cost_value(names[1], p['values'][1])}"
                         for p in snapshot.front)
        parts.append(Text(f"Pareto front ({names[0]}/{names[1]}), cheapest first: {rows}"))
    if snapshot.tensorboard:
        parts.append(Text(tensorboard_hint(snapshot.tensorboard)))
    if snapshot.fail_reasons:
        parts.append(Text("failures: " + ", ".join(f"{k} {v}" for k, v in snapshot.fail_reasons.items()), "red"))
    if workers is not None:
        parts.append(workers)
    elif snapshot.running:
        table = Table("trial", "worker", "elapsed", "epochs", box=None, header_style="bold")
        for r in snapshot.running:
            table.add_row(str(r.number), f"{r.worker_host}:{r.worker_pid}", format_elapsed(r.elapsed_s), str(r.epochs_reported))
        parts.append(table)
    return Group(*parts)


def baseline_lines(snapshot: Snapshot) -> list[str]:
    """``baseline plain-adam: 0.2434 (the best is 0.0163 lower; lower is better)``, one per finished baseline."""
    if snapshot.best_value is None:
        return []
    maximize = snapshot.direction.split(", ")[0] == "maximize"
    lines = []
    for b in snapshot.baselines:
        over = b["infeasible"]
        if b["value"] is not None:
            gap = ranking.against_best(snapshot.best_value, b["value"], maximize=maximize)
            lines.append(f"baseline {b['name']}: {b['value']:.4f} ({gap}; {ranking.better_direction(maximize)}"
                         + (", infeasible)" if over else ")"))
        elif isinstance(over, str):
            lines.append(f"baseline {b['name']}: infeasible ({over})")
    return lines


@dataclass(frozen=True)
class StoredStudy:
    """One study in a storage, as `searcher studies --storage` lists it."""

    name: str
    spec: str | None  # the name of the spec it was created from; None: not made by searcher
    seed: int | None
    split_seed: int | None
    counts: dict[str, int]  # every name in STATES -> trials
    best_value: float | None
    direction: str
    created: dt.datetime | None  # when its first trial started


def list_stored(storage: optuna.storages.BaseStorage) -> list[StoredStudy]:
    """Every study in the storage, by name, with its trial counts and best value."""
    rows = []
    for s in storage.get_all_studies():
        trials = [t for t in storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)
                  if not stored.is_carried(t)]  # a warm start's history is not the study's
        counts = Counter(t.state.name for t in trials)
        spec = stored.spec_dict(s)
        data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
        seed = spec.get("seed")
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        maximize = s.directions == [optuna.study.StudyDirection.MAXIMIZE]
        rows.append(StoredStudy(
            name=s.study_name, spec=spec.get("name"), seed=seed,
            split_seed=data["split_seed"] if data.get("split_seed") is not None else seed,
            counts={state: counts.get(state, 0) for state in STATES},
            best_value=(max if maximize else min)(values) if values and len(s.directions) == 1 else None,
            direction="/".join(d.name.lower() for d in s.directions),
            created=min((t.datetime_start for t in trials if t.datetime_start), default=None),
        ))
    return sorted(rows, key=lambda r: r.name)


def render_stored(rows: list[StoredStudy]) -> Table:
    table = Table("study", "spec", "seed", "split seed", "complete", "pruned", "failed", "running", "waiting",
                  "best", "started", box=None, header_style="bold")
    for r in rows:
        c = r.counts
        table.add_row(r.name, r.spec or "-", _or_dash(r.seed), _or_dash(r.split_seed),
                      *(str(c[s]) for s in STATES),
                      "-" if r.best_value is None else f"{r.best_value:.4f} ({r.direction[:3]})",
                      r.created.strftime("%Y-%m-%d %H:%M") if r.created else "-")
    return table


def _or_dash(v: Any) -> str:
    return "-" if v is None else str(v)
