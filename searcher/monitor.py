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

from searcher.study import finished

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# Every other way a trial fails records its reason first; a trial without one lost its worker.
LOST_WORKER = "killed (stale heartbeat)"


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
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    running: list[RunningTrial] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def finished(self) -> int:
        return finished(Counter(self.counts))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished}


def fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a failed trial ended; a trial with no recorded reason lost its worker."""
    return trial.user_attrs.get("fail_reason") or LOST_WORKER


def take_snapshot(study: optuna.Study) -> Snapshot:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    reasons = Counter(fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    now = dt.datetime.now()
    running = [
        RunningTrial(
            number=t.number,
            worker_pid=t.user_attrs.get("worker_pid"),
            worker_host=t.user_attrs.get("worker_host"),
            elapsed_s=round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else 0.0,
            epochs_reported=len(t.intermediate_values),
        )
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(complete, key=lambda t: t.value)
    seconds = sum(t.duration.total_seconds() for t in trials if t.duration and t.state.is_finished())
    return Snapshot(
        study=study.study_name,
        direction=study.direction.name.lower(),
        n_trials=study.user_attrs.get("n_trials"),
        counts={s: counts.get(s, 0) for s in STATES},
        fail_reasons=dict(reasons),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        running=sorted(running, key=lambda r: r.number),
        train_seconds=round(seconds, 1),
    )


def format_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


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
        head.append(f"  elapsed {_duration(elapsed_s)}")
    if eta_s is not None:
        head.append(f"  remaining ~{_duration(eta_s)}")
    parts: list[Any] = [head]
    if snapshot.best_value is not None:
        parts.append(Text.assemble(("best ", "bold"), f"{snapshot.best_value:.4f} (trial {snapshot.best_trial}): ",
                                   (format_params(snapshot.best_params), "dim")))
    if snapshot.fail_reasons:
        parts.append(Text("failures: " + ", ".join(f"{k} {v}" for k, v in snapshot.fail_reasons.items()), "red"))
    if workers is not None:
        parts.append(workers)
    elif snapshot.running:
        table = Table("trial", "worker", "elapsed", "epochs", box=None, header_style="bold")
        for r in snapshot.running:
            table.add_row(str(r.number), f"{r.worker_host}:{r.worker_pid}", _duration(r.elapsed_s), str(r.epochs_reported))
        parts.append(table)
    return Group(*parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


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
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        counts = Counter(t.state.name for t in trials)
        spec = s.user_attrs.get("spec") if isinstance(s.user_attrs.get("spec"), dict) else {}
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
